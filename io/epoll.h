/* SPDX-License-Identifier: MIT */
/*
 * epoll.h: the epoll backend (io/epoll.c) and how a loop picks its backend
 * (io/select.c).
 */
#ifndef KEEL_IO_EPOLL_H
#define KEEL_IO_EPOLL_H

#include "backend.h"

/* A new epoll backend for one loop (setup not yet run), or NULL. */
struct keel__backend *keel__epoll_new(void);
/* Free a backend whose setup failed (it is never torn down). */
void keel__epoll_drop(struct keel__backend *b);

#endif
