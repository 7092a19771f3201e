//go:build wasip1

package wasmgate

// The host interface of the WIT world: the raw imports, each wrapped once
// in a function that lowers its arguments and lifts its results the way the
// canonical ABI says. Memory the host hands back was allocated through
// cabi_realloc (dispatcher.go) and is taken from there.

import (
	"runtime"
	"unsafe"
)

//go:wasmimport wasmgate:processor/host@0.1.0 get-request-info
func rawGetRequestInfo(ret uint32)

//go:wasmimport wasmgate:processor/host@0.1.0 get-header
func rawGetHeader(message, name, nameLen, ret uint32)

//go:wasmimport wasmgate:processor/host@0.1.0 get-headers
func rawGetHeaders(message, ret uint32)

//go:wasmimport wasmgate:processor/host@0.1.0 set-header
func rawSetHeader(message, name, nameLen, value, valueLen uint32)

//go:wasmimport wasmgate:processor/host@0.1.0 add-header
func rawAddHeader(message, name, nameLen, value, valueLen uint32)

//go:wasmimport wasmgate:processor/host@0.1.0 remove-header
func rawRemoveHeader(message, name, nameLen uint32)

//go:wasmimport wasmgate:processor/host@0.1.0 get-status
func rawGetStatus() uint32

//go:wasmimport wasmgate:processor/host@0.1.0 set-status
func rawSetStatus(status uint32)

//go:wasmimport wasmgate:processor/host@0.1.0 replace-body
func rawReplaceBody(body, bodyLen uint32)

//go:wasmimport wasmgate:processor/host@0.1.0 send-response
func rawSendResponse(status, headers, headersLen, body, bodyLen uint32)

//go:wasmimport wasmgate:processor/host@0.1.0 set-upstream
func rawSetUpstream(url, urlLen, ret uint32)

//go:wasmimport wasmgate:processor/host@0.1.0 call
func rawCall(method, methodLen, url, urlLen, headers, headersLen, body, bodyLen, timeoutMs, ret uint32)

//go:wasmimport wasmgate:processor/host@0.1.0 call-result
func rawCallResult(handle, ret uint32)

//go:wasmimport wasmgate:processor/host@0.1.0 set-checkpoint
func rawSetCheckpoint(data, dataLen uint32)

//go:wasmimport wasmgate:processor/host@0.1.0 get-checkpoint
func rawGetCheckpoint(ret uint32)

//go:wasmimport wasmgate:processor/host@0.1.0 counter-add
func rawCounterAdd(key, keyLen uint32, delta int64, windowMs, hasLimit uint32, limit int64, ret uint32)

//go:wasmimport wasmgate:processor/host@0.1.0 kv-get
func rawKvGet(key, keyLen, ret uint32)

//go:wasmimport wasmgate:processor/host@0.1.0 kv-set
func rawKvSet(key, keyLen, value, valueLen, ttlMs uint32)

//go:wasmimport wasmgate:processor/host@0.1.0 kv-delete
func rawKvDelete(key, keyLen uint32)

//go:wasmimport wasmgate:processor/host@0.1.0 log
func rawLog(level, message, messageLen uint32)

//go:wasmimport wasmgate:processor/host@0.1.0 define-metric
func rawDefineMetric(kind, name, nameLen, help, helpLen, labels, labelsLen, buckets, bucketsLen, ret uint32)

//go:wasmimport wasmgate:processor/host@0.1.0 record-metric
func rawRecordMetric(metric, labels, labelsLen uint32, value float64)

// -- lowering ------------------------------------------------------------------

func strPtr(s string) uint32   { return uint32(uintptr(unsafe.Pointer(unsafe.StringData(s)))) }
func bytesPtr(b []byte) uint32 { return uint32(uintptr(unsafe.Pointer(unsafe.SliceData(b)))) }
func area(a *[6]uint32) uint32 { return uint32(uintptr(unsafe.Pointer(a))) }

// headerList lowers a list<tuple<string, string>>: (ptr, len) pairs borrowing the strings.
func headerList(headers []Header) []uint32 {
	flat := make([]uint32, 0, 4*len(headers))
	for _, h := range headers {
		flat = append(flat, strPtr(h.Name), uint32(len(h.Name)), strPtr(h.Value), uint32(len(h.Value)))
	}
	return flat
}

func stringList(values []string) []uint32 {
	flat := make([]uint32, 0, 2*len(values))
	for _, v := range values {
		flat = append(flat, strPtr(v), uint32(len(v)))
	}
	return flat
}

func flatPtr(flat []uint32) uint32 { return uint32(uintptr(unsafe.Pointer(unsafe.SliceData(flat)))) }

// -- lifting -------------------------------------------------------------------

func takeString(ptr, n uint32) string { return string(takeBytes(ptr, n)) }

// result lifts result<u32, string> (and result<_, string>) from a return area.
func result(ret *[6]uint32) (uint32, error) {
	if ret[0]&0xff == 0 {
		return ret[1], nil
	}
	return 0, hostError(takeString(ret[1], ret[2]))
}

type hostError string

func (e hostError) Error() string { return string(e) }

// -- the calls -------------------------------------------------------------------

func requestInfo() RequestInfo {
	var ret [14]uint32
	rawGetRequestInfo(uint32(uintptr(unsafe.Pointer(&ret))))
	field := func(i int) string { return takeString(ret[2*i], ret[2*i+1]) }
	return RequestInfo{field(0), field(1), field(2), field(3), field(4), field(5), field(6)}
}

func header(message Message, name string) (string, bool) {
	ret := new([6]uint32)
	rawGetHeader(uint32(message), strPtr(name), uint32(len(name)), area(ret))
	runtime.KeepAlive(name)
	if ret[0]&0xff != 1 {
		return "", false
	}
	return takeString(ret[1], ret[2]), true
}

func headers(message Message) Headers {
	ret := new([6]uint32)
	rawGetHeaders(uint32(message), area(ret))
	decoded, _ := decodeHeaders(takeBytes(ret[0], ret[1])) // the host's encoding is fixed by the WIT
	return decoded
}

func setHeader(message Message, name, value string) {
	rawSetHeader(uint32(message), strPtr(name), uint32(len(name)), strPtr(value), uint32(len(value)))
	runtime.KeepAlive(name)
	runtime.KeepAlive(value)
}

func addHeader(message Message, name, value string) {
	rawAddHeader(uint32(message), strPtr(name), uint32(len(name)), strPtr(value), uint32(len(value)))
	runtime.KeepAlive(name)
	runtime.KeepAlive(value)
}

func removeHeader(message Message, name string) {
	rawRemoveHeader(uint32(message), strPtr(name), uint32(len(name)))
	runtime.KeepAlive(name)
}

func replaceBody(body []byte) {
	rawReplaceBody(bytesPtr(body), uint32(len(body)))
	runtime.KeepAlive(body)
}

func sendResponse(response LocalResponse) {
	flat := headerList(response.Headers)
	rawSendResponse(uint32(response.Status), flatPtr(flat), uint32(len(response.Headers)), bytesPtr(response.Body),
		uint32(len(response.Body)))
	runtime.KeepAlive(flat)
	runtime.KeepAlive(response)
}

func setUpstream(url string) error {
	ret := new([6]uint32)
	rawSetUpstream(strPtr(url), uint32(len(url)), area(ret))
	runtime.KeepAlive(url)
	_, err := result(ret)
	return err
}

func call(request CallRequest) (uint32, error) {
	flat := headerList(request.Headers)
	ret := new([6]uint32)
	rawCall(strPtr(request.Method), uint32(len(request.Method)), strPtr(request.URL), uint32(len(request.URL)),
		flatPtr(flat), uint32(len(request.Headers)), bytesPtr(request.Body), uint32(len(request.Body)),
		request.TimeoutMs, area(ret))
	runtime.KeepAlive(flat)
	runtime.KeepAlive(request)
	return result(ret)
}

func callResult(handle uint32) (CallResponse, error) {
	// result<call-response, call-error>: tag; then status, headers and body at 4, 8 and 16.
	ret := new([6]uint32)
	rawCallResult(handle, area(ret))
	if ret[0]&0xff != 0 {
		return CallResponse{}, CallError(ret[1] & 0xff)
	}
	decoded, _ := decodeHeaders(takeBytes(ret[2], ret[3]))
	return CallResponse{Status: uint16(ret[1] & 0xffff), Headers: decoded, Body: takeBytes(ret[4], ret[5])}, nil
}

func setCheckpoint(data []byte) {
	rawSetCheckpoint(bytesPtr(data), uint32(len(data)))
	runtime.KeepAlive(data)
}

func checkpoint() ([]byte, bool) {
	ret := new([6]uint32)
	rawGetCheckpoint(area(ret))
	if ret[0]&0xff != 1 {
		return nil, false
	}
	return takeBytes(ret[1], ret[2]), true
}

func log(level LogLevel, message string) {
	rawLog(uint32(level), strPtr(message), uint32(len(message)))
	runtime.KeepAlive(message)
}

func defineMetric(kind MetricKind, name, help string, labels []string, buckets []float64) (uint32, error) {
	flat := stringList(labels)
	ret := new([6]uint32)
	rawDefineMetric(uint32(kind), strPtr(name), uint32(len(name)), strPtr(help), uint32(len(help)), flatPtr(flat),
		uint32(len(labels)), uint32(uintptr(unsafe.Pointer(unsafe.SliceData(buckets)))), uint32(len(buckets)), area(ret))
	runtime.KeepAlive(flat)
	runtime.KeepAlive(labels)
	runtime.KeepAlive(buckets)
	return result(ret)
}

func recordMetric(metric uint32, labelValues []string, value float64) {
	flat := stringList(labelValues)
	rawRecordMetric(metric, flatPtr(flat), uint32(len(labelValues)), value)
	runtime.KeepAlive(flat)
	runtime.KeepAlive(labelValues)
}

func counterAdd(key string, delta int64, windowMs uint32, limit *int64) Counter {
	// record counter { value: s64, reset-ms: u32, applied: bool }: 16 bytes, 8-aligned.
	ret := new([2]uint64)
	var hasLimit uint32
	var limitValue int64
	if limit != nil {
		hasLimit, limitValue = 1, *limit
	}
	rawCounterAdd(strPtr(key), uint32(len(key)), delta, windowMs, hasLimit, limitValue,
		uint32(uintptr(unsafe.Pointer(ret))))
	runtime.KeepAlive(key)
	return Counter{Value: int64(ret[0]), ResetMs: uint32(ret[1]), Applied: (ret[1]>>32)&0xff != 0}
}

func kvGet(key string) ([]byte, bool) {
	ret := new([6]uint32)
	rawKvGet(strPtr(key), uint32(len(key)), area(ret))
	runtime.KeepAlive(key)
	if ret[0]&0xff != 1 {
		return nil, false
	}
	return takeBytes(ret[1], ret[2]), true
}

func kvSet(key string, value []byte, ttlMs uint32) {
	rawKvSet(strPtr(key), uint32(len(key)), bytesPtr(value), uint32(len(value)), ttlMs)
	runtime.KeepAlive(key)
	runtime.KeepAlive(value)
}

func kvDelete(key string) {
	rawKvDelete(strPtr(key), uint32(len(key)))
	runtime.KeepAlive(key)
}
