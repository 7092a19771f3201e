//go:build wasip1

package wasmgate

// Call is a started sub-request; its result is ready in OnResume.
type Call uint32

// StartCall starts a sub-request; return Pause from the hook to wait for it.
// The gateway sends it (with Idempotency-Key and Wasmgate-Attempt, retried
// per the processor's subrequests config) once the hook returns, and calls
// OnResume when every call started has finished. An error means the request
// is malformed or subrequests.max_concurrent calls are waiting. A call to an
// origin not allowed still starts: its result is CallDenied, and nothing is sent.
func StartCall(request CallRequest) (Call, error) {
	handle, err := call(request)
	return Call(handle), err
}

// Result returns the call's outcome, from OnResume on; the error is a CallError.
func (c Call) Result() (CallResponse, error) {
	return callResult(uint32(c))
}
