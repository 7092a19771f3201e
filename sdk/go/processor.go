package wasmgate

// Processor is what a processor implements. Embed DefaultProcessor for
// no-op hooks and write only the ones Init asks for.
//
// Request hooks run in the route's order, response hooks in reverse order.
type Processor interface {
	// Init is called once per instance, before any other hook, with the
	// processor's config from the gateway file as JSON. It returns the
	// phases to call, or an error saying what is wrong with the config.
	Init(config []byte) (Phases, error)
	OnRequestHeaders(endOfStream bool) Action
	// OnRequestBody gets a chunk of the request body, or the whole body when
	// the processor buffers (body: buffer). Replace it with ReplaceBody.
	OnRequestBody(body []byte, endOfStream bool) Action
	OnResponseHeaders(endOfStream bool) Action
	OnResponseBody(body []byte, endOfStream bool) Action
	// OnResume runs when every call a hook started before returning Pause
	// has finished; read them with Call.Result.
	OnResume() Action
	// OnDone: the exchange is over, also after a failure or a local response.
	OnDone()
}

// DefaultProcessor has a no-op for every hook but Init.
type DefaultProcessor struct{}

func (DefaultProcessor) OnRequestHeaders(bool) Action       { return Continue }
func (DefaultProcessor) OnRequestBody([]byte, bool) Action  { return Continue }
func (DefaultProcessor) OnResponseHeaders(bool) Action      { return Continue }
func (DefaultProcessor) OnResponseBody([]byte, bool) Action { return Continue }
func (DefaultProcessor) OnResume() Action                   { return Continue }
func (DefaultProcessor) OnDone()                            {}
