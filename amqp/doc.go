// Package amqp is the AMQP 0-9-1 wire layer of Warren: frames, field
// tables, content headers, and one struct per protocol method with its
// encoder and decoder. It holds no broker state, starts no goroutines and
// does no I/O beyond the io.Reader given to NewFrameReader.
//
// The method structs, the reply-code and class-id constants and
// DecodeMethod are generated from RabbitMQ's extended spec XML
// (spec/amqp0-9-1.stripped.extended.xml, which adds confirm.select,
// basic.nack, exchange.bind/unbind, connection.blocked/unblocked and
// connection.update-secret to 0-9-1) by the program in internal/gen; run
// `go generate ./amqp` after changing either. The generated code is plain
// straight-line append/decode code, no reflection.
//
// Field tables follow RabbitMQ and amqp091-go rather than the letter of
// the 0-9-1 spec: 's' is a signed 16-bit integer, 'l' a signed 64-bit one,
// 'x' a byte array, decimals are signed and a field array's length prefix
// counts bytes (see Table).
//
// Performance shapes the API. FrameReader returns payloads that alias its
// buffer (no copy for frames that fit in the bufio buffer); the Append*
// functions append to a caller's slice so a writer can batch frames into
// one buffer without allocating; ScanContentHeader validates a content
// header and extracts what routing needs without decoding the headers
// table, so a broker can keep the raw header bytes and send them back
// verbatim on delivery. Decoders never panic on hostile input and check
// every length prefix against the bytes actually present before
// allocating; the fuzz tests (FuzzReadFrame, FuzzDecodeMethod,
// FuzzDecodeTable, FuzzDecodeContentHeader) hold them to that.
//
// Malformed input is reported as *Error with the reply code RabbitMQ uses,
// so the server can pass it straight into connection.close.
package amqp

//go:generate go run ./internal/gen -spec spec/amqp0-9-1.stripped.extended.xml -out methods_gen.go -testout methods_gen_test.go
