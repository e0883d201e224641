// Package media is Parley's media service: clients upload pictures, audio,
// video and files over HTTP, get back an unguessable link, the SHA-256 and,
// for images, a small JPEG thumbnail, and send those in a message; the
// recipients download by the link. Blobs expire.
//
// # Flow
//
// A client asks over its connection for an upload token
// ([Service.IssueUploadToken]: HMAC-SHA256 over the account and an expiry,
// five minutes by default), then POSTs the raw file to /v1/media with
// "Authorization: Bearer <token>". The body is streamed to a temporary file
// (FSStore: beside its final place; media/objstore: in a spool directory),
// hashed on the way, and made visible only once complete and durable
// (renamed into place after an fsync; put into the bucket); an upload cut
// off or refused midway leaves nothing. The type is sniffed from the first bytes, never taken from the
// client. JPEG, PNG, GIF and WebP images get a thumbnail (longest side 100
// px by default); one too large to decode safely or corrupt is kept
// without one, since a message may carry any file. "Too large" is decided
// from the header, before any pixel is decoded: over 50 megapixels, or
// over 128 MiB of decoder memory by the image's own layout (bytes per
// pixel of its colour model, JPEG subsampling and progressive mode, PNG
// interlacing), so that a 381 KB 7000x7000 16-bit PNG, which decodes to
// 392 MB, is refused like a 100000x100000 one.
//
// # Who may download
//
// The download URL is the capability, as WhatsApp's CDN links are: anyone
// who holds it may GET it, no token needed. The id in it is 128 bits from
// crypto/rand, so it cannot be guessed or enumerated, and it reaches
// recipients only inside messages. A per-account download token would
// need the media server to know who may read each message (every member of
// a group, whoever a message is forwarded to, later joiners), which the
// message layer does not tell it and need not; the link model needs no
// such coupling, lets the bytes move to a CDN or object store without an
// authorisation hook, and stays correct when messages are end-to-end
// encrypted, where the server cannot read the link at all. What it costs is that a leaked link works until
// the media expire; clients that need more encrypt the file before upload
// and put the key in the message, as WhatsApp does.
//
// Consequently:
//   - Every id that leads to nothing the request may see (unknown,
//     malformed, expired, or, for DELETE, someone else's) gets the same
//     404 with the same body. Ids are validated by form before the store is
//     touched.
//   - The store is keyed by a hash of the id, never the id, and logs name
//     that key: a directory listing, a backup or a log line does not yield
//     download links, and a lookup's timing says nothing about a guessed
//     id. Upload tokens are checked with hmac.Equal.
//   - Downloads are Cache-Control private (the URL is a secret; shared
//     caches must not keep it), immutable, with the SHA-256 as ETag and a
//     max-age running to the expiry; ranges and conditional requests are
//     served by http.ServeContent, after the Range header is checked: at
//     most 8 ranges (more: the whole file), 416 when none can be
//     satisfied, a malformed one ignored.
//
// # Limits
//
// Uploads are bounded in size (64 MiB, 413 too_large), per account in rate
// (30 a minute, 429 rate_limited with Retry-After) and in total stored (1
// GiB, 413 quota_exceeded: the request is too large for what the account
// has left; it may upload again once it deletes media or old media expire).
// Image decodes run at most two at a time, and all decodes at once may
// allocate at most 256 MiB by the same estimate (Config.DecodeMemory, a
// first-come-first-served weighted semaphore); an upload whose decode does
// not fit within 5 s (Config.DecodeWait) is stored without a thumbnail.
//
// What that costs at worst, measured with the defaults on 2 cores: 16
// accounts upload at once, over loopback through the real handler, a
// 4000x4000 16-bit RGBA PNG each (128 MB decoded, just under
// MaxDecodeBytes): peak RSS (VmHWM) 627 MiB, from 13 MiB before; with
// GOMEMLIMIT=320MiB, 329 MiB (5 of the 16 then went without a thumbnail,
// past DecodeWait). The same 16 uploads of the 7000x7000 bomb, refused by
// its header: 16 MiB. Go's collector lets the heap grow to twice what
// was live at the last collection (GOGC=100), so budget about
// 2.5 x DecodeMemory for thumbnails, or set GOMEMLIMIT. One case per
// process, since VmHWM is the process's:
//
//	go test -run '^$' -bench 'DecodeMemoryRSS/under' -benchtime 1x ./media
//	go test -run '^$' -bench 'DecodeMemoryRSS/bomb' -benchtime 1x ./media
//
// # Storage
//
// [BlobStore] is the storage interface; [FSStore] is the default, files
// under one directory with a JSON sidecar of [Meta] beside each blob.
// A node of a cluster uses media/objstore instead: a JetStream object
// store bucket that every node reads and writes, replicated like the
// messages, so any node serves any node's uploads. media/mediatest is the
// conformance suite every BlobStore passes.
// [Service.Run] sweeps expired blobs in the background; [Service.Sweep] is
// the same, once, at a given time. Each sweep also counts every account's
// usage again from the store, so that Services sharing one (a cluster's
// nodes) count each other's uploads and deletions.
package media
