// Package client is Parley's Go SDK: registration over the HTTP API, and a
// logged-in connection over the native protocol (Noise IK over TCP) that
// sends messages, receives messages and receipts, acknowledges them and
// reports reads. A reconnect presents the resumption ticket of the last
// login (noise/ticket.go), which the server answers with about half a full
// handshake's CPU; a refused ticket falls back to IK on the same
// connection.
//
// A typical device:
//
//	p, _ := client.LoadProfile(dir)
//	cfg := p.Config()
//	cfg.Reconnect = true
//	c, err := client.Dial(ctx, cfg)
//	...
//	ack, err := c.Send(ctx, "+14155550102", []byte("hello"))
//	for {
//		in, err := c.Recv(ctx)
//		...           // show or store it
//		c.Ack(in.Seq) // then let the server erase it
//	}
//
// Media (pictures, audio, video, files) go over HTTP, not the connection:
//
//	tok, err := c.UploadToken(ctx)
//	m, err := client.Upload(ctx, nil, tok, file, size) // streamed; URL, SHA-256, thumbnail
//	m.Caption = "the view"
//	ack, err := c.SendMedia(ctx, "+14155550102", m)
//
// and the recipient, given in.Message.Media,
//
//	n, err := client.DownloadVerified(ctx, nil, m.Url, m.Sha256, w)
//
// Delivery is at-least-once from the server's queue; the SDK turns it into
// exactly-once for the application. Sends are idempotent by their id, so a
// Send interrupted by a lost connection is sent again with the same id after
// the reconnect and stored once. Deliveries that come again after a
// reconnect are recognised by their queue position, and messages by their
// server id, and are not returned twice.
//
// The package imports only the standard library, protobuf and Parley's wire
// and noise packages, so that applications embedding it pull in nothing of
// the server.
package client
