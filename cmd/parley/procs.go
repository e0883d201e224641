package main

// pollerProcs decides the event loop's pollers and the process's
// GOMAXPROCS from the CPUs the process may use (the runtime's GOMAXPROCS at
// the start, which follows the container's CPU limit) and the pollers asked
// for (0: the default).
//
// An nbio poller waits for events in epoll_wait, called as an ordinary
// system call, which keeps one of the scheduler's Ps while it blocks. With
// one poller per CPU, as before, every P of a quiet node sat in
// epoll_wait: the runtime's sysmon thread then took them back from the
// syscall within 20 us, and each time the node woke it went on checking
// every 20 us for a millisecond or more, about a third of a lightly loaded
// node's CPU on two vCPUs. So the pollers get Ps of their own beyond the
// CPUs, which leaves the CPUs' Ps idle when the node is, and there are half
// as many pollers as CPUs (at least one); on two vCPUs one poller was no
// slower than two at saturation (BENCHMARKS.md, issue 11, "Stop 22").
//
// Setting GOMAXPROCS turns off the runtime's own updates of it when the
// container's CPU limit changes: a node picks up a new limit at its next
// start (or live upgrade).
func pollerProcs(cpus, pollers int) (pollersOut, procs int) {
	if pollers <= 0 {
		pollers = max(1, cpus/2)
	}
	return pollers, cpus + pollers
}
