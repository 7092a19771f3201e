// misbehave is a test fixture: a Go processor that fails in the way a
// request's x-misbehave header asks (panic, memory, spin), and otherwise
// tags the request, so a test sees the next request go through.
package main

import (
	"fmt"

	"github.com/wasmgate/wasmgate/sdk/go"
)

type misbehave struct {
	wasmgate.DefaultProcessor
}

var hoard [][]byte

func (misbehave) Init([]byte) (wasmgate.Phases, error) { return wasmgate.PhaseRequestHeaders, nil }

func (misbehave) OnRequestHeaders(bool) wasmgate.Action {
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
	return wasmgate.Continue
}

func init() {
	wasmgate.Register(func() wasmgate.Processor { return misbehave{} })
}

func main() {}
