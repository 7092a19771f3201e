package wasmgate

// Action is what the gateway does when a hook returns.
type Action uint32

const (
	// Continue: the next processor, then the upstream or the client.
	Continue Action = 0
	// Respond: answer with the response given to RespondWith in this hook.
	Respond Action = 1
	// Pause: wait for the calls this hook started (StartCall), then run OnResume.
	Pause Action = 2
)

// Phases are the hooks a processor wants to be called in, returned by Init.
// The gateway skips the others: a body nobody asked for never enters the sandbox.
type Phases uint32

const (
	PhaseRequestHeaders  Phases = 1
	PhaseRequestBody     Phases = 2
	PhaseResponseHeaders Phases = 4
	PhaseResponseBody    Phases = 8
	PhaseDone            Phases = 16
	AllPhases            Phases = 31
)

// Message says whose headers a call reads or changes.
type Message uint32

const (
	Request  Message = 0
	Response Message = 1
)

// LogLevel of a line in the gateway's log.
type LogLevel uint32

const (
	LevelTrace LogLevel = iota
	LevelDebug
	LevelInfo
	LevelWarn
	LevelError
)

// MetricKind of a processor-defined metric.
type MetricKind uint32

const (
	KindCounter MetricKind = iota
	KindGauge
	KindHistogram
)

// RequestInfo holds facts about the request being processed.
type RequestInfo struct {
	Method        string
	Path          string // as the client sent it, without the query
	Query         string // without the leading '?'; empty when absent
	RequestID     string
	Route         string
	Tenant        string
	ClientAddress string
}

// Header is one header line; repeated names are kept in order.
type Header struct {
	Name, Value string
}

// LocalResponse is a complete response a processor answers with (see RespondWith).
type LocalResponse struct {
	Status  uint16
	Headers []Header
	Body    []byte
}

// CallRequest is a sub-request for StartCall.
type CallRequest struct {
	Method string
	// URL is absolute http or https; its origin must be in the processor's subrequests.allow.
	URL     string
	Headers []Header
	Body    []byte
	// TimeoutMs is per attempt; 0 means the processor's subrequests.timeout.
	TimeoutMs uint32
}

// CallResponse is what a finished call answered.
type CallResponse struct {
	Status  uint16
	Headers Headers
	Body    []byte
}

// CallError says why a call has no response.
type CallError uint32

const (
	CallTimeout   CallError = 0 // no answer within the call's timeout (after any retries)
	CallConnect   CallError = 1 // no connection, or it broke before the response
	CallDenied    CallError = 2 // the origin is not in subrequests.allow: nothing was sent
	CallTooLarge  CallError = 3 // the body passed subrequests.max_response_bytes
	CallCancelled CallError = 4 // the phase's deadline passed or the request ended
)

func (e CallError) Error() string {
	switch e {
	case CallTimeout:
		return "timeout"
	case CallConnect:
		return "connect"
	case CallDenied:
		return "denied"
	case CallTooLarge:
		return "too_large"
	default:
		return "cancelled"
	}
}

// Counter is a counter after CounterAdd.
type Counter struct {
	Value   int64  // its value in the current window
	ResetMs uint32 // milliseconds until the window ends and it starts again from 0
	Applied bool   // false when the delta was not added: the value would have passed the limit
}
