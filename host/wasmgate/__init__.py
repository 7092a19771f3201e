"""wasmgate: an HTTP gateway that runs WebAssembly processors on LLM traffic."""
