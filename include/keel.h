/* SPDX-License-Identifier: MIT */
/*
 * keel.h: the whole public API of keel, an io_uring-native reactor framework.
 *
 * One io_uring ring per thread drives stackless state-machine tasks. The
 * headers follow the layers, lowest first:
 *   keel/task.h        tasks, resume macros, abort frames, tokens, scopes
 *   keel/sync.h        mailboxes, oneshot, broadcast, semaphore, mutex...
 *   keel/loop.h        the loop, timers, the runtime, dumps and metrics
 *   keel/io.h          ops, buffer rings, recv/accept streams, sockets
 *   keel/workq.h       a bounded MPMC work queue shared by loops
 *   keel/select.h      select over several waits in one task
 *   keel/supervisor.h  actors and supervision trees
 *   keel/health.h      a health registry, rendered as JSON
 *   keel/resilience.h  circuit breaker, retry with backoff
 *   keel/limit.h       rate limiter, bulkhead, load shedding
 *   keel/pipeline.h    stream pipelines: source, stages, sink
 *   keel/executor.h    a bounded task executor
 *   keel/trace.h       the tracer and its file format
 *   keel/sim.h         a deterministic simulated kernel for the loops
 * man 7 keel is the overview.
 */
#ifndef KEEL_H
#define KEEL_H

#include <keel/executor.h>
#include <keel/health.h>
#include <keel/io.h>
#include <keel/limit.h>
#include <keel/loop.h>
#include <keel/pipeline.h>
#include <keel/resilience.h>
#include <keel/select.h>
#include <keel/sim.h>
#include <keel/supervisor.h>
#include <keel/sync.h>
#include <keel/task.h>
#include <keel/trace.h>
#include <keel/workq.h>

#define KEEL_VERSION_MAJOR 0
#define KEEL_VERSION_MINOR 1
#define KEEL_VERSION_PATCH 0

#endif
