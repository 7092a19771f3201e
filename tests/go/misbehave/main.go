// misbehave is a test fixture: a Go processor that fails in the way a
// request's x-misbehave header asks (panic, memory, spin), and otherwise
// tags the request, so a test sees the next request go through. With
// x-call-url it calls that URL first and passes the answer on; with
// x-count it counts requests in shared state.
package main

import (
	"fmt"

	"github.com/wasmgate/wasmgate/sdk/go"
)

type misbehave struct {
	wasmgate.DefaultProcessor
	call wasmgate.Call
}

var hoard [][]byte

func (*misbehave) Init([]byte) (wasmgate.Phases, error) { return wasmgate.PhaseRequestHeaders, nil }

func (p *misbehave) OnRequestHeaders(bool) wasmgate.Action {
	if url, ok := wasmgate.RequestHeader("x-call-url"); ok {
		call, err := wasmgate.StartCall(wasmgate.CallRequest{Method: "POST", URL: url, Body: []byte("from go")})
		if err != nil {
			panic(err)
		}
		p.call = call
		return wasmgate.Pause
	}
	how, _ := wasmgate.RequestHeader("x-misbehave")
	switch how {
	case "panic":
		panic("asked to panic")
	case "memory":
		for {
			hoard = append(hoard, make([]byte, 1<<20))
		}
	case "spin":
		for {
		}
	}
	fmt.Println("misbehave: behaving")
	wasmgate.SetRequestHeader("x-go", "ok")
	if _, ok := wasmgate.RequestHeader("x-count"); ok {
		limit := int64(2)
		counter := wasmgate.CounterAdd("hits", 1, 60_000, &limit)
		wasmgate.SetRequestHeader("x-hits", fmt.Sprintf("%d %t", counter.Value, counter.Applied))
		wasmgate.StateSet("last", []byte(fmt.Sprint(counter.Value)), 0)
		last, _ := wasmgate.StateGet("last")
		wasmgate.SetRequestHeader("x-last", string(last))
	}
	return wasmgate.Continue
}

func (p *misbehave) OnResume() wasmgate.Action {
	answer, err := p.call.Result()
	if err != nil {
		wasmgate.SetRequestHeader("x-call-error", err.Error())
		return wasmgate.Continue
	}
	idempotency, _ := answer.Headers.Get("x-seen-key")
	wasmgate.SetRequestHeader("x-call-status", fmt.Sprint(answer.Status))
	wasmgate.SetRequestHeader("x-call-body", string(answer.Body))
	wasmgate.SetRequestHeader("x-call-key", idempotency)
	return wasmgate.Continue
}

func init() {
	wasmgate.Register(func() wasmgate.Processor { return &misbehave{} })
}

func main() {}
