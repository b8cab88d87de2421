/* SPDX-License-Identifier: MIT */
/*
 * runner.c: keel-sim, the simulation runner: runs scenarios (scenario.h)
 * over many seeds on the simulated kernel (keel/sim.h) and checks, at the
 * end of every seed, what no run may break:
 *
 *   - the scenario's own checks (every byte of a transfer that reported
 *     success arrived once and in order: scn_verify);
 *   - every loop: no task left (tasks_live, zombies), no op in flight,
 *     no timer armed, every provided buffer back in its ring
 *     (bufs_in_use), every frame freed (frames_live; tokens are
 *     plain heap objects: sim-ci's LeakSanitizer finds one never freed);
 *   - the machine: every descriptor closed, byte counts agree
 *     (keel_sim_check);
 *   - the trace well-formed (trace.c);
 *   - every `--recheck`-th seed runs twice and both traces hash the same
 *     (virtual timestamps included): the run is a function of the seed.
 *
 * A failing seed prints one line with the command that replays it and
 * writes its trace. A run that hangs for real (a loop in the simulator,
 * not virtual time running out) is caught by a watchdog that prints the
 * same line.
 */
#include "scenario.h"
#include "trace_check.h"

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

/* A seed that runs this long in real time has hung. */
#define WATCHDOG_S 60

static const struct scenario *const scenarios[] = {
    &scn_echo,	 &scn_proxy,  &scn_supervise, &scn_mailbox,
    &scn_cancel, &scn_zombie, &scn_idle,      &scn_embedded,
};
#define NSCENARIOS (sizeof(scenarios) / sizeof(scenarios[0]))

struct options {
	const char *scenario; /* NULL: all */
	uint64_t from, seeds;
	bool one_seed;
	const char *trace; /* keep this seed's trace here */
	uint64_t recheck;  /* every n-th seed twice (0: never) */
	const char *faults;
	bool fault_mix; /* a spec per seed from fault_specs[] */
	bool verbose;
};

/* Totals of one scenario over its seeds. */
struct totals {
	uint64_t seeds, failed, rechecked;
	uint64_t events, ops, cqes, bytes_checked, transfers, virtual_ns;
	uint64_t cancels_raced, overflows, zombies_seen, faults, faulted;
	double secs;
};

/*
 * --fault-mix: seed n runs under fault_specs[n % N], so that every
 * scenario meets each kind of fault (resets, short transfers, EMFILE and
 * ECONNREFUSED, ENOBUFS, ECANCELED, EIO, latency and reordering) over a
 * few seeds, and a seed replays with the same spec.
 */
static const char *const fault_specs[] = {
    "recv:reset:0.02,send:short:0.1,accept:emfile:0.02,connect:refused:0.02",
    "send:pipe:0.02,recv:short:0.2,write:short:0.2,read:short:0.2",
    "*:delay=1ms:0.05,*:reorder:0.05",
    "recv:nobufs:0.02,send_zc:nobufs:0.05,socket:emfile:0.05",
    "*:canceled:0.01,send:reset:0.01",
    "*:io:0.005,*:reorder:0.02,recv:short:0.05",
};
#define NFAULT_SPECS (sizeof(fault_specs) / sizeof(fault_specs[0]))

static const char *faults_of(const struct options *o, uint64_t seed)
{
	return o->fault_mix ? fault_specs[seed % NFAULT_SPECS] : o->faults;
}

static const char *argv0;
/* What the watchdog reports. */
static const char *current_name;
static uint64_t current_seed;

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static const char *tmpdir(void)
{
	const char *d = getenv("TMPDIR");

	return d && *d ? d : "/tmp";
}

static void print_replay(FILE *f, const char *name, uint64_t seed,
			 const struct options *o)
{
	fprintf(f, "  replay: %s --scenario %s --seed %" PRIu64, argv0, name,
		seed);
	if (o && faults_of(o, seed))
		fprintf(f, " --faults '%s'", faults_of(o, seed));
	fprintf(f, " --trace %s/keel-sim-%s-%" PRIu64 ".trace\n", tmpdir(),
		name, seed);
}

static void watchdog(int sig)
{
	char line[512];
	int n = snprintf(line, sizeof(line),
			 "FAIL %s seed %" PRIu64
			 ": still running after %d s of real time\n"
			 "  replay: %s --scenario %s --seed %" PRIu64 "\n",
			 current_name, current_seed, WATCHDOG_S, argv0,
			 current_name, current_seed);

	(void)sig;
	if (n > 0 && write(2, line, (size_t)n) < 0)
		_exit(2);
	_exit(1);
}

/* The machine's shape, from the seed: latency, short transfers, buffers. */
static void machine_opts(struct scn *s, struct keel_sim_opts *mo,
			 const struct options *o)
{
	static const uint64_t latency[] = {0, 1000, 200000, 2 * MS};
	static const unsigned short_ppm[] = {0, 0, 1000, 200000};
	static const unsigned sndbuf[] = {0, 0, 4096, 1 << 20};

	memset(mo, 0, sizeof(*mo));
	mo->seed = s->seed;
	mo->max_latency_ns = latency[scn_below(s, 4)];
	mo->short_ppm = short_ppm[scn_below(s, 4)];
	mo->sndbuf = sndbuf[scn_below(s, 4)];
	mo->faults = faults_of(o, s->seed);
	s->faults = mo->faults && *mo->faults;
}

/* What must hold of a loop once its scenario is over. */
static void check_loop(struct scn *s, unsigned i)
{
	struct keel_loop_stats st;

	keel_loop_stats(s->loops[i], &st);
	s->faults_injected += st.faults_injected;
	if (st.tasks_live || st.zombies)
		scn_fail(s,
			 "loop %u: %" PRIu64 " tasks and %" PRIu64
			 " zombies left",
			 i, st.tasks_live, st.zombies);
	else if (st.ops_inflight)
		scn_fail(s, "loop %u: %" PRIu64 " ops in flight", i,
			 st.ops_inflight);
	else if (st.timers_armed)
		scn_fail(s, "loop %u: %" PRIu64 " timers armed", i,
			 st.timers_armed);
	else if (st.bufs_in_use)
		scn_fail(s, "loop %u: %" PRIu64 " ring buffers not returned", i,
			 st.bufs_in_use);
	else if (st.frames_live)
		scn_fail(s, "loop %u: %" PRIu64 " frames not freed", i,
			 st.frames_live);
}

/*
 * One run of one seed, traced to `trace`. Returns true if it passed; the
 * trace's check (and hash) in *tc.
 */
static bool run_once(const struct scenario *sc, uint64_t seed,
		     const struct options *o, const char *trace,
		     struct sim_trace_check *tc, struct totals *tot, char *why,
		     size_t whylen)
{
	struct scn s = {.seed = seed};
	struct keel_sim_opts mo;
	struct keel_sim_stats ss;
	uint64_t start_ns;
	int err;

	/* The scenario's PRNG differs from the machine's (same seed). */
	s.rng = seed ^ 0x5ce7a210f00dull;
	for (const char *p = sc->name; *p; p++)
		s.rng = s.rng * 131 + (unsigned char)*p;
	machine_opts(&s, &mo, o);
	err = keel_sim_create(&s.sim, &mo);
	if (err) {
		snprintf(why, whylen, "keel_sim_create: %s",
			 keel_strerror(err));
		return false;
	}
	start_ns = keel_sim_now(s.sim);
	s.trace_path = trace;
	sc->run(&s);
	for (unsigned i = 0; i < s.nloops; i++)
		check_loop(&s, i);
	for (unsigned i = s.nloops; i-- > 0;)
		keel_loop_destroy(s.loops[i]);
	free(s.world);
	if (s.tracing)
		keel_trace_stop();
	if (!s.failed && keel_sim_check(s.sim, why, whylen))
		scn_fail(&s, "keel_sim_check: %s", why);
	keel_sim_stats(s.sim, &ss);
	keel_sim_destroy(s.sim);
	memset(tc, 0, sizeof(*tc));
	if (s.tracing)
		sim_trace_check(trace, tc);
	if (!s.failed && tc->failed)
		scn_fail(&s, "trace: %s", tc->why);
	if (s.failed)
		snprintf(why, whylen, "%s", s.why);
	tot->events += tc->events;
	tot->ops += ss.ops;
	tot->cqes += ss.cqes;
	tot->virtual_ns += ss.virtual_ns - start_ns;
	tot->cancels_raced += ss.cancels_raced;
	tot->overflows += ss.overflows;
	/* Errors, short transfers, delays, reorders: the loops count all. */
	tot->faults += s.faults_injected;
	tot->bytes_checked += s.bytes_checked;
	tot->transfers += s.transfers;
	tot->faulted += s.faulted;
	tot->zombies_seen += s.zombies_seen;
	return !s.failed;
}

static bool run_seed(const struct scenario *sc, uint64_t seed,
		     const struct options *o, const char *trace,
		     struct totals *tot)
{
	struct sim_trace_check tc, tc2;
	char why[256] = "";
	bool ok;

	current_name = sc->name;
	current_seed = seed;
	alarm(WATCHDOG_S);
	ok = run_once(sc, seed, o, trace, &tc, tot, why, sizeof(why));
	if (ok && o->recheck && seed % o->recheck == 0) {
		struct totals ignored = {0};

		tot->rechecked++;
		ok = run_once(sc, seed, o, trace, &tc2, &ignored, why,
			      sizeof(why));
		if (ok && tc.hash != tc2.hash) {
			snprintf(why, sizeof(why),
				 "not deterministic: trace hashes %016" PRIx64
				 " and %016" PRIx64 " (%" PRIu64 " and %" PRIu64
				 " events)",
				 tc.hash, tc2.hash, tc.events, tc2.events);
			ok = false;
		}
	}
	alarm(0);
	tot->seeds++;
	if (o->verbose || o->one_seed)
		printf("%s seed %" PRIu64 ": %s, %" PRIu64
		       " events, hash %016" PRIx64 "\n",
		       sc->name, seed, ok ? "ok" : "FAIL", tc.events, tc.hash);
	if (!ok) {
		tot->failed++;
		printf("FAIL %s seed %" PRIu64 ": %s\n", sc->name, seed, why);
		if (!o->one_seed)
			print_replay(stdout, sc->name, seed, o);
		fflush(stdout);
	}
	return ok;
}

static void print_totals(const char *name, const struct totals *t)
{
	printf("sim: %-10s %6" PRIu64 " seeds %3" PRIu64
	       " failed %7.1f s %7.0f "
	       "seeds/s | %" PRIu64 " events, %" PRIu64 " ops, %" PRIu64
	       " transfers (%" PRIu64 " KiB checked), %" PRIu64
	       " cancel races, %" PRIu64 " overflows, %" PRIu64
	       " zombies (peaks), %" PRIu64 " faults (%" PRIu64
	       " transfers ended by one), %" PRIu64 " rechecked, %.1f s "
	       "virtual\n",
	       name, t->seeds, t->failed, t->secs,
	       t->secs > 0 ? (double)t->seeds / t->secs : 0.0, t->events,
	       t->ops, t->transfers, t->bytes_checked / 1024, t->cancels_raced,
	       t->overflows, t->zombies_seen, t->faults, t->faulted,
	       t->rechecked, (double)t->virtual_ns / 1e9);
}

static void usage(int status)
{
	fprintf(status ? stderr : stdout,
		"usage: keel-sim [--scenario NAME] [--seed S | --from S "
		"--seeds N]\n"
		"                [--trace FILE] [--recheck N] [--faults SPEC] "
		"[-v] [--list]\n"
		"Runs simulation scenarios over seeds and checks the "
		"invariants of every run.\n"
		"  --scenario NAME  one scenario (default: all)\n"
		"  --seed S         one seed; its trace goes to --trace\n"
		"  --from S         first seed (default $SIM_FROM or 1)\n"
		"  --seeds N        seeds per scenario (default $SIM_SEEDS "
		"or 100)\n"
		"  --recheck N      run every N-th seed twice and compare the "
		"trace hashes\n"
		"  --faults SPEC    a KEEL_FAULTS spec for every loop\n"
		"  --fault-mix      a spec per seed from a built-in set\n");
	exit(status);
}

static uint64_t number(const char *s)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, 0);
	if (errno || end == s || *end)
		usage(2);
	return v;
}

static void parse(int argc, char **argv, struct options *o)
{
	const char *env;

	o->from = (env = getenv("SIM_FROM")) && *env ? number(env) : 1;
	o->seeds = (env = getenv("SIM_SEEDS")) && *env ? number(env) : 100;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (!strcmp(a, "-h") || !strcmp(a, "--help"))
			usage(0);
		if (!strcmp(a, "-v")) {
			o->verbose = true;
			continue;
		}
		if (!strcmp(a, "--fault-mix")) {
			o->fault_mix = true;
			continue;
		}
		if (!strcmp(a, "--list")) {
			for (size_t k = 0; k < NSCENARIOS; k++)
				printf("%-10s %s\n", scenarios[k]->name,
				       scenarios[k]->what);
			exit(0);
		}
		if (!v)
			usage(2);
		i++;
		if (!strcmp(a, "--scenario"))
			o->scenario = strcmp(v, "all") ? v : NULL;
		else if (!strcmp(a, "--seed")) {
			o->from = number(v);
			o->seeds = 1;
			o->one_seed = true;
		} else if (!strcmp(a, "--from"))
			o->from = number(v);
		else if (!strcmp(a, "--seeds"))
			o->seeds = number(v);
		else if (!strcmp(a, "--trace"))
			o->trace = v;
		else if (!strcmp(a, "--recheck"))
			o->recheck = number(v);
		else if (!strcmp(a, "--faults"))
			o->faults = v;
		else
			usage(2);
	}
}

int main(int argc, char **argv)
{
	struct options o = {0};
	struct totals all = {0};
	char memfd_path[64];
	const char *trace;
	bool found = false;

	argv0 = argv[0];
	parse(argc, argv, &o);
	signal(SIGALRM, watchdog);
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (o.trace) {
		trace = o.trace;
	} else {
		/* In memory: a seed's trace is read back and forgotten. */
		int fd = memfd_create("keel-sim-trace", MFD_CLOEXEC);

		if (fd < 0) {
			perror("keel-sim: memfd_create");
			return 2;
		}
		snprintf(memfd_path, sizeof(memfd_path), "/proc/self/fd/%d",
			 fd);
		trace = memfd_path;
	}
	for (size_t k = 0; k < NSCENARIOS; k++) {
		const struct scenario *sc = scenarios[k];
		struct totals t = {0};
		double t0 = now_s();

		if (o.scenario && strcmp(o.scenario, sc->name))
			continue;
		found = true;
		for (uint64_t i = 0; i < o.seeds; i++)
			run_seed(sc, o.from + i, &o, trace, &t);
		t.secs = now_s() - t0;
		if (!o.one_seed)
			print_totals(sc->name, &t);
		all.seeds += t.seeds;
		all.failed += t.failed;
		all.secs += t.secs;
		all.rechecked += t.rechecked;
		all.faults += t.faults;
		all.faulted += t.faulted;
	}
	if (!found) {
		fprintf(stderr, "keel-sim: no scenario %s (--list)\n",
			o.scenario);
		return 2;
	}
	if (!o.one_seed)
		printf("sim: %" PRIu64 " seeds, %" PRIu64 " failed, %" PRIu64
		       " rechecked, %" PRIu64 " faults injected, %.1f s, %.0f "
		       "seeds/s\n",
		       all.seeds, all.failed, all.rechecked, all.faults,
		       all.secs,
		       all.secs > 0 ? (double)all.seeds / all.secs : 0.0);
	return all.failed ? 1 : 0;
}
