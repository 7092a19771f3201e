package wasmgate

import "testing"

func TestDecodeHeadersKeepsRepeatedNamesInOrder(t *testing.T) {
	// [["accept","a"],["accept","b"]]
	data := []byte{0x92, 0x92, 0xa6, 'a', 'c', 'c', 'e', 'p', 't', 0xa1, 'a', 0x92, 0xa6, 'a', 'c', 'c', 'e', 'p', 't', 0xa1, 'b'}
	headers, err := decodeHeaders(data)
	if err != nil {
		t.Fatal(err)
	}
	if got := headers.Values("Accept"); len(got) != 2 || got[0] != "a" || got[1] != "b" {
		t.Fatalf("values = %v", got)
	}
}

func TestDecodeHeadersRefusesATruncatedList(t *testing.T) {
	if _, err := decodeHeaders([]byte{0x91, 0x92, 0xa6, 'a'}); err == nil {
		t.Fatal("a truncated list decoded")
	}
}
