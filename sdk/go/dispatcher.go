//go:build wasip1

package wasmgate

// The handler's entry points, routed to the registered processor. Hidden
// from users: they implement Processor and call Register.

import (
	"fmt"
	"unsafe"
)

var (
	factory   func() Processor
	processor Processor
	// pinned keeps alive the memory the host asked for through cabi_realloc,
	// until the SDK takes it: Go's collector does not move heap objects, but
	// would free one nobody references.
	pinned = map[uint32][]byte{}
	// initResult is init's return area: result<phases, string>.
	initResult [3]uint32
)

// Register names the processor type: newProcessor makes the value that
// serves an instance (a fresh instance per request, unless the processor
// is pooled). Call it from an init function.
func Register(newProcessor func() Processor) {
	factory = newProcessor
}

//go:wasmexport cabi_realloc
func cabiRealloc(old, oldLen, align, newLen uint32) uint32 {
	if newLen == 0 {
		return align
	}
	buf := make([]byte, newLen) // Go aligns heap allocations of 8 bytes or more to 8: enough for this world
	if old != 0 {
		copy(buf, pinned[old][:oldLen])
		delete(pinned, old)
	}
	ptr := bytesPtr(buf)
	pinned[ptr] = buf
	return ptr
}

// takeBytes takes ownership of memory the host filled through cabi_realloc.
func takeBytes(ptr, n uint32) []byte {
	if n == 0 {
		return nil
	}
	buf, ok := pinned[ptr]
	if !ok || uint32(len(buf)) < n {
		panic(fmt.Sprintf("wasmgate: the host passed memory it did not allocate (0x%x, %d bytes)", ptr, n))
	}
	delete(pinned, ptr)
	return buf[:n]
}

//go:wasmexport wasmgate:processor/handler@0.1.0#init
func exportInit(config, configLen uint32) uint32 {
	if factory == nil {
		panic("wasmgate: no processor: call wasmgate.Register from an init function")
	}
	processor = factory()
	phases, err := processor.Init(takeBytes(config, configLen))
	if err != nil {
		message := []byte(err.Error())
		ptr := bytesPtr(message)
		pinned[ptr] = message // until init's post-return
		initResult = [3]uint32{1, ptr, uint32(len(message))}
	} else {
		initResult = [3]uint32{0, uint32(phases), 0}
	}
	return uint32(uintptr(unsafe.Pointer(&initResult)))
}

//go:wasmexport cabi_post_wasmgate:processor/handler@0.1.0#init
func exportInitPostReturn(uint32) {
	if initResult[0] == 1 {
		delete(pinned, initResult[1])
	}
}

func flag(value uint32) bool { return value != 0 }

//go:wasmexport wasmgate:processor/handler@0.1.0#on-request-headers
func exportOnRequestHeaders(endOfStream uint32) uint32 {
	return uint32(processor.OnRequestHeaders(flag(endOfStream)))
}

//go:wasmexport wasmgate:processor/handler@0.1.0#on-request-body
func exportOnRequestBody(body, bodyLen, endOfStream uint32) uint32 {
	return uint32(processor.OnRequestBody(takeBytes(body, bodyLen), flag(endOfStream)))
}

//go:wasmexport wasmgate:processor/handler@0.1.0#on-response-headers
func exportOnResponseHeaders(endOfStream uint32) uint32 {
	return uint32(processor.OnResponseHeaders(flag(endOfStream)))
}

//go:wasmexport wasmgate:processor/handler@0.1.0#on-response-body
func exportOnResponseBody(body, bodyLen, endOfStream uint32) uint32 {
	return uint32(processor.OnResponseBody(takeBytes(body, bodyLen), flag(endOfStream)))
}

//go:wasmexport wasmgate:processor/handler@0.1.0#on-resume
func exportOnResume() uint32 {
	return uint32(processor.OnResume())
}

//go:wasmexport wasmgate:processor/handler@0.1.0#on-done
func exportOnDone() {
	processor.OnDone()
}
