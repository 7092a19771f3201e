//go:build wasip1

package wasmgate

import "fmt"

// Info returns the facts of the request being processed.
func Info() RequestInfo { return requestInfo() }

// RequestHeader returns the first value of a request header (case-insensitive).
func RequestHeader(name string) (string, bool) { return header(Request, name) }

// RequestHeaders returns every request header, in order, names in lower case.
func RequestHeaders() Headers { return headers(Request) }

// SetRequestHeader replaces every value of name; allowed until the request is sent upstream.
func SetRequestHeader(name, value string) { setHeader(Request, name, value) }

// AddRequestHeader adds a value, keeping those already there.
func AddRequestHeader(name, value string) { addHeader(Request, name, value) }

// RemoveRequestHeader removes every value of name.
func RemoveRequestHeader(name string) { removeHeader(Request, name) }

// SetUpstream sends the request to url (absolute http or https) instead of the route's upstream.
func SetUpstream(url string) error { return setUpstream(url) }

// ResponseStatus returns the response's status; 0 while there is none.
func ResponseStatus() uint16 { return uint16(rawGetStatus()) }

// SetResponseStatus changes the status, until the client has the response headers.
func SetResponseStatus(status uint16) { rawSetStatus(uint32(status)) }

// ResponseHeader returns the first value of a response header.
func ResponseHeader(name string) (string, bool) { return header(Response, name) }

// ResponseHeaders returns every response header, in order, names in lower case.
func ResponseHeaders() Headers { return headers(Response) }

// SetResponseHeader replaces every value of name; allowed in response hooks until the client has the headers.
func SetResponseHeader(name, value string) { setHeader(Response, name, value) }

// AddResponseHeader adds a value, keeping those already there.
func AddResponseHeader(name, value string) { addHeader(Response, name, value) }

// RemoveResponseHeader removes every value of name.
func RemoveResponseHeader(name string) { removeHeader(Response, name) }

// ReplaceBody replaces the body the running hook was given: the chunk, or the whole buffered body.
func ReplaceBody(body []byte) { replaceBody(body) }

// RespondWith sets a complete local response and returns the Respond action:
// return wasmgate.RespondWith(wasmgate.LocalResponse{Status: 403}).
func RespondWith(response LocalResponse) Action {
	sendResponse(response)
	return Respond
}

// SetCheckpoint records a small checkpoint (at most 64 KiB) of this
// processor's progress in the request; a phase tried again after a
// failure (phase_retries) reads it with Checkpoint.
func SetCheckpoint(data []byte) { setCheckpoint(data) }

// Checkpoint returns the last checkpoint this processor recorded in the request.
func Checkpoint() ([]byte, bool) { return checkpoint() }

// Log writes a line in the gateway's log, under the processor's name.
func Log(level LogLevel, format string, args ...any) { log(level, fmt.Sprintf(format, args...)) }
