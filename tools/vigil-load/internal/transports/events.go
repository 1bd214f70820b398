package transports

import "bytes"

var (
	keySeq    = []byte(`"seq":`)
	keyType   = []byte(`"type":"`)
	keyText   = []byte(`"text":"`)
	keyCursor = []byte(`"cursor":`)
	keyClosed = []byte(`"closed":true`)
	typeChat  = []byte("chat")
	typeLeft  = []byte("left")
)

// scanEvents finds each event in b: one event as on the WebSocket or in
// an SSE data line, or a poll reply holding many. It is a scanner, not a
// JSON parser: it relies on the server's encoding ({"seq":N,"type":"T",
// "data":{...}}) and on the only "text" field being our chat's, whose
// text is a decimal number. For each event it calls fn with its sequence
// number, its type, and the chat text (nil for other types).
func scanEvents(b []byte, fn func(seq uint64, typ, text []byte)) int {
	n := 0
	for {
		i := bytes.Index(b, keySeq)
		if i < 0 {
			return n
		}
		b = b[i+len(keySeq):]
		seq, rest := parseUint(b)
		b = rest
		j := bytes.Index(b, keyType)
		if j < 0 {
			return n
		}
		b = b[j+len(keyType):]
		k := bytes.IndexByte(b, '"')
		if k < 0 {
			return n
		}
		typ := b[:k]
		b = b[k+1:]
		var text []byte
		if bytes.Equal(typ, typeChat) {
			if t := bytes.Index(b, keyText); t >= 0 {
				s := b[t+len(keyText):]
				if e := bytes.IndexByte(s, '"'); e >= 0 {
					text = s[:e]
				}
			}
		}
		fn(seq, typ, text)
		n++
	}
}

// pollCursor reads the cursor and closed fields of a poll reply.
func pollCursor(b []byte) (cursor uint64, closed, ok bool) {
	i := bytes.LastIndex(b, keyCursor)
	if i < 0 {
		return 0, false, false
	}
	cursor, _ = parseUint(b[i+len(keyCursor):])
	return cursor, bytes.Contains(b[i:], keyClosed), true
}

// parseUint reads the decimal digits at the start of b.
func parseUint(b []byte) (uint64, []byte) {
	var v uint64
	i := 0
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		v = v*10 + uint64(b[i]-'0')
		i++
	}
	return v, b[i:]
}
