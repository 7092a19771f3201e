// header-inject-go adds and removes request and response headers, as its
// config says; the same config as the Rust header-inject:
//
//	{"request":  {"add": {"x-name": "value"}, "remove": ["x-other"]},
//	 "response": {"add": {"x-name": "value"}, "remove": ["server"]}}
//
// add replaces any value already there. Only the phases the config needs are asked for.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"

	"github.com/wasmgate/wasmgate/sdk/go"
)

type edits struct {
	Add    map[string]string `json:"add"`
	Remove []string          `json:"remove"`
}

func (e edits) empty() bool { return len(e.Add) == 0 && len(e.Remove) == 0 }

func (e edits) apply(set func(name, value string), remove func(name string)) {
	for _, name := range e.Remove {
		remove(name)
	}
	names := make([]string, 0, len(e.Add))
	for name := range e.Add {
		names = append(names, name)
	}
	sort.Strings(names) // a map's order is random: keep the headers' order stable
	for _, name := range names {
		set(name, e.Add[name])
	}
}

type headerInject struct {
	wasmgate.DefaultProcessor
	Request  edits `json:"request"`
	Response edits `json:"response"`
}

func (p *headerInject) Init(config []byte) (wasmgate.Phases, error) {
	decoder := json.NewDecoder(bytes.NewReader(config))
	decoder.DisallowUnknownFields()
	if err := decoder.Decode(p); err != nil {
		return 0, fmt.Errorf("config: %w", err)
	}
	var phases wasmgate.Phases
	if !p.Request.empty() {
		phases |= wasmgate.PhaseRequestHeaders
	}
	if !p.Response.empty() {
		phases |= wasmgate.PhaseResponseHeaders
	}
	fmt.Printf("header-inject-go ready: %d request edits, %d response edits\n",
		len(p.Request.Add)+len(p.Request.Remove), len(p.Response.Add)+len(p.Response.Remove))
	return phases, nil
}

func (p *headerInject) OnRequestHeaders(bool) wasmgate.Action {
	p.Request.apply(wasmgate.SetRequestHeader, wasmgate.RemoveRequestHeader)
	return wasmgate.Continue
}

func (p *headerInject) OnResponseHeaders(bool) wasmgate.Action {
	p.Response.apply(wasmgate.SetResponseHeader, wasmgate.RemoveResponseHeader)
	return wasmgate.Continue
}

func init() {
	wasmgate.Register(func() wasmgate.Processor { return &headerInject{} })
}

func main() {}
