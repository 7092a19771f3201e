package wasmgate

import (
	"errors"
	"strings"
)

// Headers is a header list as the gateway gives it: names in lower case,
// repeated names kept, in order.
type Headers []Header

// Get returns the first value of name (case-insensitive).
func (h Headers) Get(name string) (string, bool) {
	for _, header := range h {
		if strings.EqualFold(header.Name, name) {
			return header.Value, true
		}
	}
	return "", false
}

// Values returns every value of name, in order.
func (h Headers) Values(name string) []string {
	var values []string
	for _, header := range h {
		if strings.EqualFold(header.Name, name) {
			values = append(values, header.Value)
		}
	}
	return values
}

var errMsgpack = errors.New("headers: not a MessagePack array of [name, value] pairs")

// decodeHeaders reads the host's encoding (a MessagePack array of [name,
// value] string pairs): one crossing and one copy however many headers.
func decodeHeaders(data []byte) (Headers, error) {
	r := reader{data: data}
	count, err := r.array()
	if err != nil {
		return nil, err
	}
	headers := make(Headers, 0, min(count, len(data)))
	for i := 0; i < count; i++ {
		if n, err := r.array(); err != nil || n != 2 {
			return nil, errMsgpack
		}
		name, err := r.str()
		if err != nil {
			return nil, err
		}
		value, err := r.str()
		if err != nil {
			return nil, err
		}
		headers = append(headers, Header{name, value})
	}
	return headers, nil
}

type reader struct {
	data []byte
	at   int
}

func (r *reader) take(n int) ([]byte, error) {
	if n < 0 || r.at+n > len(r.data) {
		return nil, errMsgpack
	}
	b := r.data[r.at : r.at+n]
	r.at += n
	return b, nil
}

func (r *reader) uint(n int) (int, error) {
	b, err := r.take(n)
	if err != nil {
		return 0, err
	}
	v := 0
	for _, c := range b {
		v = v<<8 | int(c)
	}
	return v, nil
}

func (r *reader) array() (int, error) {
	tag, err := r.uint(1)
	switch {
	case err != nil:
		return 0, err
	case tag&0xf0 == 0x90:
		return tag & 0x0f, nil
	case tag == 0xdc:
		return r.uint(2)
	case tag == 0xdd:
		return r.uint(4)
	}
	return 0, errMsgpack
}

func (r *reader) str() (string, error) {
	tag, err := r.uint(1)
	if err != nil {
		return "", err
	}
	var n int
	switch {
	case tag&0xe0 == 0xa0:
		n = tag & 0x1f
	case tag == 0xd9 || tag == 0xc4:
		n, err = r.uint(1)
	case tag == 0xda || tag == 0xc5:
		n, err = r.uint(2)
	case tag == 0xdb || tag == 0xc6:
		n, err = r.uint(4)
	default:
		return "", errMsgpack
	}
	if err != nil {
		return "", err
	}
	b, err := r.take(n)
	return string(b), err
}
