"""Every threshold that turns a measurement into a verdict, in one place.

Each one is read by the harness that sets a flag, by the suite and the report
that show it, and by the calibration tools that judge their own runs, so a
flag means the same thing wherever it appears.

Two ideas share the word "stall" because result keys spell both; each is
defined here once:

* a **stall** (``STALL_S``): the server answered nothing for ``STALL_S`` in a
  closed or connect loop; the run is invalid.
* a **client stall** (``CLIENT_STALL_S``): the polling load client's own loop
  was held off its CPU for ``CLIENT_STALL_S`` or more; counted (result keys
  ``client.stalls``, ``stall_s``, ``longest_stall_s``), never a flag.
  ``compare`` marks a cell "STALLS differ" when two runs' client stall shares
  are ``CLIENT_STALLS_DIFFER_RATIO`` apart (``client_stalls_differ``).
"""

__all__ = ["CLIENT_BOUND_UTIL", "SERVER_BOUND_UTIL", "UNSTABLE_SPREAD", "OUTLIER_SHARE", "BEHIND_FRACTION", "STALL_S", "CLIENT_STALL_S", "CLIENT_STALLS_DIFFER_RATIO", "CLIENT_STALLS_DIFFER_FLOOR", "DISTURBED_SHARE",
           "CLOCK_OFFSET_SHARE", "LOSSY_SHARE", "SAME_COST_SHARE",
           "WORKER_IDLE_SHARE", "THROTTLED_SHARE", "LOADED_IDLE_SHARE", "LOADED_MIN_IN_FLIGHT", "CANARY_SLOWDOWN",
           "CLIENT_SLOWDOWN", "HICCUP_S", "STALL_SLICE_S"]

#: the load CPUs at least this busy: the figure measures the client as much as the server ("client-bound")
CLIENT_BOUND_UTIL = 0.95
#: the server CPUs at least this busy: the server was the limit ("server-bound", ``limited_by``)
SERVER_BOUND_UTIL = 0.95
#: pyperf's rule: a spread between rounds of 10% of the median or more is UNSTABLE (the spread as one outlier
#: round cannot set it: the median absolute deviation scaled to a standard deviation)
UNSTABLE_SPREAD = 0.10
#: a round whose figure lies more than this share from its cell's median is an OUTLIER round: shown, and
#: left out of the median by its nature, but never left out of the report
OUTLIER_SHARE = 0.20
#: open loop: an achieved rate more than 5% below the target is BEHIND
BEHIND_FRACTION = 0.05
#: closed/connect loops: no message completed for this long inside the window is a stall (the run is invalid)
STALL_S = 1.0
#: open loop, polling: a gap this long between two passes of the load loop is a client stall (its CPU was taken
#: from it; shown, not a flag): longer than a pass's own work, which is one epoll batch (at most C_MAX_EVENTS
#: events, one per ready socket, a few µs each), and shorter than the 1-10 ms p99 such stalls make on a shared VM
CLIENT_STALL_S = 0.0005
#: compare: two runs' open-loop cells whose clients lost shares of their windows to client stalls this many
#: times apart measured different machines as much as different servers (client stalls set the p99)
CLIENT_STALLS_DIFFER_RATIO = 2.0
#: ... counted only when the larger share is at least this (below it client stalls cannot set a p99)
CLIENT_STALLS_DIFFER_FLOOR = 0.005
#: the longest scheduler hiccup one round must absorb: one tick of a CONFIG_HZ=250 kernel.  Rounds are made long
#: enough that one cannot set their figure (``bench/suite/plan.py``); an open-loop round whose pinned CPUs other
#: threads held longer than this, in slices of ``STALL_SLICE_S`` or more, has a tail that measures them too
HICCUP_S = 0.004
#: a thread outside the run whose slices on a pinned CPU average this long or more can keep a waking server (or
#: the load) waiting that long; traced on the 2-core VM: RCU, softirq and kworker threads average 3-25 µs, the
#: kernel's DAMON sampler 0.3-0.9 ms (4-14 ms every few seconds), the sandbox's agent 2 ms each second and up to
#: 60 ms while it streams a command's output
STALL_SLICE_S = 0.0001
#: foreign work (or the hypervisor's steal) on a side's pinned CPUs of at least this share of one CPU over
#: the window: the figure measures the neighbours as much as the server ("disturbed")
DISTURBED_SHARE = 0.05
#: a side's processes throttled by a cgroup CPU quota for at least this share of the window: CPU taken where the
#: guest's counters do not show it (the CPU reads idle while the throttled task waits); "unseen", as disturbed
THROTTLED_SHARE = DISTURBED_SHARE
#: a closed-loop round with messages always queued in which the busier side was off its CPU for at least this share
#: of the window: time lost that no process in the guest used ("unseen"); quiet rounds here keep the busier side
#: at 0.92-1.0 of its CPU (a 50% quota on server and load left each at 0.25)
LOADED_IDLE_SHARE = 0.20
#: ... judged only with at least this many messages in flight (conns x depth): fewer leave both sides waiting on
#: each other's wake-ups, as a 1-connection ping-pong does (0.55 busy each, quiet)
LOADED_MIN_IN_FLIGHT = 8
#: the canary (a fixed piece of work timed on each pinned CPU after a round) taking this many times the least it
#: took there: the CPU was slower or time was stolen from it without the guest's steal counter knowing.  Two
#: default runs on the 2-core machine (709 closed-loop attempts): rounds after a canary under 1.5 read within
#: 1.4% of their cell's median (median of each group), rounds after one of 1.5 or more 8-9% below it
CANARY_SLOWDOWN = 1.5
#: a closed-loop round whose load client needed this many times the least CPU per operation (per read, write and
#: epoll_wait) of its cell's clean rounds: the client's code per operation does not change, whatever the server's
#: pace, so its CPU ran slower (the host took it).  Six default runs on the 2-core machine (1,766 closed-loop
#: rounds): of those 10% or more below their cell's 90th percentile msgs/s, 91% read 1.15 or more; of those
#: within 5% of it, 0.7% did
CLIENT_SLOWDOWN = 1.15
#: a load from several hosts: a host's clock off the coordinator's by more than this share of the measured
#: window starts its load visibly early or late (a warning; chrony keeps LAN clocks microseconds apart)
CLOCK_OFFSET_SHARE = 0.01
#: udp: more than this share of the datagrams sent lost (no echo within the timeout) is LOSSY: its msgs/s
#: counts only the answers, and its latency only the datagrams that came back
LOSSY_SHARE = 0.01
#: the report's sentences: two figures within this share of each other (a ratio in 0.9-1.1) cost "about the same"
SAME_COST_SHARE = 0.10
#: an idle ``sockbench cluster-worker`` may take at most this share of one core from its load host
#: (measured by ``bench/calibrate/worker_idle.py``, not by a timed test)
WORKER_IDLE_SHARE = 0.005
