// Package bench is Parley's load generator (`parley bench`): it drives a
// running node over the native protocol and measures what the node costs
// and how fast it goes. Every mode is a function taking a Config and a
// progress writer and returning a JSON-tagged result, so tests call them
// directly and the command prints them as a table or as JSON.
//
// # Modes
//
//   - Setup provisions test accounts through the admin listener's bulk
//     endpoint (POST /admin/accounts/bulk, in chunks) and writes a small
//     state file: a random seed, the user count and the server key. User i
//     has the phone number +1555 followed by i in seven digits and a device
//     key derived from SHA-256(seed, i), so later modes, and several bench
//     processes at once, log in as the same users without storing keys.
//   - Idle logs N users in, makes each send one message to a neighbour and
//     receive one (with the delivered receipt), then holds the connections.
//     It reports logins per second, logins per server CPU-second, and the
//     server's memory per connection.
//   - Pairs runs P sender->receiver pairs. Each sender keeps at most W
//     messages outstanding until their DELIVERED receipt arrives (the
//     receiver acks every delivery, which makes the server queue the receipt
//     for the sender). With --rate the senders are paced (open loop) instead
//     of sending as fast as the window allows. It reports throughput counted
//     at the delivered receipt, the send->delivered latency (HDR histogram),
//     the server's CPU time per message, and a loss check.
//   - Storm logs N users in, then closes every connection at once and logs
//     them all in again, reporting the time until the last is back.
//   - Drain queues M messages for an offline user, logs it in, and reports
//     how fast its queue drains to it.
//
// # Client
//
// The bench does not use the client SDK. The load generator shares the
// machine (two cores, in the reference setup) with the server, so its own
// cost per message decides how much of the server's capacity can be seen.
// It speaks the protocol directly on wire and noise: one goroutine per
// connection, a blocking read of everything available, frames parsed in
// place with protowire (no allocation per frame), and every frame a read
// batch produces (acks, new sends) sealed into one buffer and written with
// one syscall. A sender is clocked by its receipts: no timers, channels or
// extra goroutines unless --rate asks for pacing.
//
// Logins: a Noise IK handshake costs the client about as much as the server
// (several X25519 operations each side). So that login rates measure the
// server rather than the load generator, idle and storm prepare every
// client's first handshake message (fresh ephemeral key, used once) before
// the clock starts. Each login then ends as a device's does: the client
// verifies the reply (its two remaining X25519 operations and the login
// result) and sends its proof, the first message sealed with the new keys,
// without which the server starts no session and counts the connection as
// a handshake in flight (node.Limits.MaxHandshakes). The server's CPU per
// login so includes the proof and the session's start.
//
// A user that logged in before in the same bench process logs in again as
// a returning device does: with the resumption ticket of its last login
// (noise/ticket.go), about half a full handshake's server CPU. idle --warm
// and storm's reconnects are such logins (logins_resumed, resumed say how
// many); --full-handshake makes every login a full Noise IK handshake, as
// a device's first login is.
//
// # Measurement methods
//
// Server CPU: GET /admin/process returns the server's user+system CPU
// seconds (from /proc/self/stat, 10 ms resolution); a mode reads it before
// and after its measured phase and divides the difference by the logins or
// messages of that phase. Everything the server did in between counts,
// receipts and acks included. Logins are counted by the server too (the
// "logins" counter), so bench processes logging in at once each report the
// true ratio. pairs also splits off the kernel's share (system time, the
// same file) and reports how long the server's threads waited, runnable,
// for a CPU (the sum of /proc/self/task/*/schedstat's second field, in
// nanoseconds), both per message: on a machine the bench shares, the
// wait is where latency goes when the CPUs are short.
//
// User-space memory per connection (idle): the server's RSS from
// GET /admin/process?gc=1 (which runs a GC and returns freed memory to the
// OS first) before the logins and after the exchange and the hold, the
// difference divided by N, the number of sessions the server gained in
// between (user_bytes_per_conn). Dividing by the server's own count, not
// this process's connections, makes several bench processes run at once
// (with --total, their connections together: each waits for the server to
// hold them all before its hold, and lingers after its reading) each report
// the figure for all of them. RSS is split in two the same way: the memory
// the Go runtime holds (go_bytes_per_conn: everything it mapped, heap,
// stacks and its own metadata, less what it returned to the OS), where
// every structure a connection or a user needs lives, and the rest
// (outside_go_bytes_per_conn), which in Parley is C memory: Pebble's
// memtables, which the exchanged messages fill (store_memtable_growth_bytes
// says by how much their arenas grew). Memtables are bounded by
// configuration (two of 64 MiB), not by the number of connections, so at a
// million connections they are a rounding error; at 19,000 they are a
// visible part of the RSS delta, which is why both figures are reported.
// The Go heap in use is reported too (heap_bytes_per_conn).
//
// The forced collection shows the memory the connections need; an operator
// sees the resident set as it is, garbage not yet collected or returned
// included, which the collector's heap target (GOGC) decides. So idle also
// reads the RSS without a collection, just before each forced-GC reading,
// and reports that growth per connection (steady_rss_bytes_per_conn). An
// idle server returns the garbage of the activity before it to the OS by
// itself (parley serve --idle-collect, 5 s of quiet by default): each of
// these readings waits for that (up to 30 s), and the result says whether
// the server had settled (server_settled_before, server_settled_after). On a freshly
// started server the logins also fill the store's caches (accounts are read
// at login); --warm logs every user in and out once before the first
// reading so that this is not counted per connection. --heap-profile
// writes the server's heap profiles at both readings, to itemise the
// difference (go tool pprof -base before after).
//
// Kernel memory per connection (idle): the difference, before the logins
// and after the hold, of /proc/meminfo Slab (socket, inode, dentry, file
// and epoll objects) plus /proc/net/sockstat TCP "mem" pages times the page
// size (socket buffers). On loopback the kernel holds both ends of every
// connection, the bench's and the server's, which cost about the same, so
// the server's share is half: kernel_bytes_per_conn = (dSlab - dProc
// + dTCPmem) / 2 / N, with N as above. dProc is what /proc inodes added to
// Slab (/proc/slabinfo, when readable): their count (proc_inode_cache)
// times an inode, a dentry and a security blob (lsm_inode_cache) each. On
// the development machine a watcher that enforces the open-file limit
// lists /proc/PID/fd of the processes, which makes one /proc inode per
// open socket (~900 B with its dentry, reclaimable, gone when the process
// exits); that is not memory a connection needs. These counters are
// machine-wide: anything else running moves them.
//
// Latency: from the moment a Send is written to the moment its DELIVERED
// receipt is read, on the sender's monotonic clock, recorded in
// microseconds in an HDR histogram (3 significant digits).
//
// Loss check (pairs, drain): each sender numbers its messages; the receiver
// checks they arrive exactly once and in order. lost counts messages the
// server accepted that never arrived, plus duplicates and out-of-order
// arrivals; anything but 0 is a bug in the server.
//
// # Limits
//
// One bench process keeps under 20,000 open files and refuses a run that
// would need more; run several processes against one node with disjoint
// user ranges (--offset). Connections are spread over source addresses
// (--src; by default, for a loopback server, 127.0.0.2 and up, one per
// 2,000 connections): once most of one address's ephemeral ports are in
// use, the kernel's search for a free one makes every connect slow, which
// costs the machine CPU the server needs. Connections are closed with a
// reset, so they leave nothing in TIME_WAIT. Every loop is bounded in count
// and in time.
package bench
