// Package adversary attacks a real Parley node over loopback, as a hostile
// client would, and checks both that each attack is refused (the status,
// the close, the metric that counts it) and that a normal user meanwhile
// still registers, logs in, sends and receives. The attacks are its tests;
// it has no API. Run it with go test -race ./internal/adversary/; the
// fuzz target FuzzAdminBulk takes -fuzz.
//
// Attackers dial from loopback addresses other than 127.0.0.1 (Linux
// routes all of 127.0.0.0/8 to lo), so that a limit per client address
// that an attack hits is the attacker's, not the normal user's.
package adversary
