/* SPDX-License-Identifier: MIT */
/*
 * error.c: keel_strerror(), the text for a status keel returned.
 *
 * keel reports failures as negative errno values and gives a few of them a
 * meaning of its own (KEEL_ABORTED is -EOWNERDEAD, a collecting scope's
 * failed join is -ECHILD, a closed channel is -EPIPE ...), for which libc's
 * text ("Owner died", "No child processes") misleads. Those get keel's
 * words here; every other negative value gets libc's description.
 *
 * Thread-safe: every string returned is a constant; libc's text comes from
 * strerrordesc_np(), which, unlike strerror(), never writes a shared
 * buffer.
 */
#include "core.h"

#include <errno.h>
#include <string.h>

const char *keel_strerror(int status)
{
	const char *s;

	if (status >= 0)
		return "success";
	switch (status) {
	case KEEL_ABORTED:
		return "task aborted (it panicked; see its abort message)";
	case -ECHILD:
		return "a child of the scope failed (see its results), or no "
		       "child is left to wait for";
	case -ECANCELED:
		return "cancelled";
	case -ETIMEDOUT:
		return "deadline passed";
	case -EPIPE:
		return "closed (the other side is gone or was closed)";
	case -ESHUTDOWN:
		return "shut down (a supervisor stopped or gave up)";
	case -EOVERFLOW:
		return "value too large, or receiver lagged (messages skipped)";
	}
	/* INT_MIN has no positive counterpart; any such value is unknown. */
	s = status > -4096 ? strerrordesc_np(-status) : NULL;
	return s ? s : "unknown error";
}
