// token-count reads the usage an OpenAI-style chat completion reports (in a
// JSON body, or in the last events of a server-sent event stream, as
// stream_options.include_usage sends it) and counts prompt and completion
// tokens in processor metrics labelled by model:
// wasmgate_guest_<processor>_llm_prompt_tokens_total and
// wasmgate_guest_<processor>_llm_completion_tokens_total.
//
// Config (optional): {"headers": true} also adds x-tokens-prompt and
// x-tokens-completion to the response; give the processor body: buffer then,
// so the headers have not left when the body is read.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/wasmgate/wasmgate/sdk/go"
)

var (
	promptTokens     = wasmgate.NewCounter("llm_prompt_tokens_total", "Prompt tokens models reported.", "model")
	completionTokens = wasmgate.NewCounter("llm_completion_tokens_total", "Completion tokens models reported.", "model")
)

type usage struct {
	PromptTokens     float64 `json:"prompt_tokens"`
	CompletionTokens float64 `json:"completion_tokens"`
}

type completion struct {
	Model string `json:"model"`
	Usage *usage `json:"usage"`
}

type tokenCount struct {
	wasmgate.DefaultProcessor
	Headers bool   `json:"headers"`
	body    []byte // a JSON body, gathered until its end
	partial []byte // an event stream's unfinished line
	counted bool
}

func (p *tokenCount) Init(config []byte) (wasmgate.Phases, error) {
	decoder := json.NewDecoder(bytes.NewReader(config))
	decoder.DisallowUnknownFields()
	if err := decoder.Decode(p); err != nil {
		return 0, fmt.Errorf("config: %w", err)
	}
	return wasmgate.PhaseResponseBody, nil
}

func (p *tokenCount) OnResponseBody(chunk []byte, endOfStream bool) wasmgate.Action {
	contentType, _ := wasmgate.ResponseHeader("content-type")
	if strings.HasPrefix(contentType, "text/event-stream") {
		p.events(chunk)
		return wasmgate.Continue
	}
	p.body = append(p.body, chunk...)
	if !endOfStream {
		return wasmgate.Continue
	}
	var answer completion
	if json.Unmarshal(p.body, &answer) == nil && answer.Usage != nil {
		p.count(answer)
		if p.Headers {
			wasmgate.SetResponseHeader("x-tokens-prompt", strconv.FormatFloat(answer.Usage.PromptTokens, 'f', -1, 64))
			wasmgate.SetResponseHeader("x-tokens-completion",
				strconv.FormatFloat(answer.Usage.CompletionTokens, 'f', -1, 64))
		}
	}
	return wasmgate.Continue
}

// events reads the complete "data:" lines of a chunk; the chunk passes on untouched, as it came.
func (p *tokenCount) events(chunk []byte) {
	lines := bytes.Split(append(p.partial, chunk...), []byte("\n"))
	p.partial = append([]byte(nil), lines[len(lines)-1]...)
	for _, line := range lines[:len(lines)-1] {
		data, ok := bytes.CutPrefix(bytes.TrimSpace(line), []byte("data:"))
		if !ok {
			continue
		}
		var event completion
		if json.Unmarshal(bytes.TrimSpace(data), &event) == nil && event.Usage != nil {
			p.count(event)
		}
	}
}

func (p *tokenCount) count(answer completion) {
	if p.counted {
		return
	}
	p.counted = true
	model := answer.Model
	if model == "" {
		model = "unknown"
	}
	promptTokens.Record(answer.Usage.PromptTokens, model)
	completionTokens.Record(answer.Usage.CompletionTokens, model)
}

func init() {
	wasmgate.Register(func() wasmgate.Processor { return &tokenCount{} })
}

func main() {}
