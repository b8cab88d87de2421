/* SPDX-License-Identifier: MIT */
/*
 * keel.h: the whole public API of keel, an io_uring-native reactor framework.
 *
 * One io_uring ring per thread drives stackless state-machine tasks. Start
 * with keel/task.h (tasks and the resume macros), keel/loop.h (the loop),
 * keel/io.h (ops), keel/timer.h (timers and sleep) and keel/net.h.
 */
#ifndef KEEL_H
#define KEEL_H

#include <keel/abort.h>
#include <keel/actor.h>
#include <keel/buf.h>
#include <keel/cancel.h>
#include <keel/introspect.h>
#include <keel/io.h>
#include <keel/loop.h>
#include <keel/mailbox.h>
#include <keel/net.h>
#include <keel/resilience.h>
#include <keel/runtime.h>
#include <keel/scope.h>
#include <keel/supervisor.h>
#include <keel/sync.h>
#include <keel/task.h>
#include <keel/timer.h>
#include <keel/trace.h>

#define KEEL_VERSION_MAJOR 0
#define KEEL_VERSION_MINOR 1
#define KEEL_VERSION_PATCH 0

#endif
