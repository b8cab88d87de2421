/* SPDX-License-Identifier: MIT */
/*
 * test_list.c: keel's one intrusive list (core/list.h): order at both ends,
 * removal of the first, a middle and the last item (the first link's prev
 * must keep naming the last), safe iteration while removing, moving a
 * whole list, and a zeroed head being an empty list.
 */
#include "list.h"

#include <criterion/criterion.h>
#include <string.h>

struct item {
	int value;
	struct keel__link link;
};

/* The values of `l` in order, checking the last link on the way. */
static int collect(const struct keel__list *l, int *out, int max)
{
	struct keel__link *n, *prev = NULL;
	int count = 0;

	keel__list_for_each (n, l) {
		cr_assert_lt(count, max, "the list does not end");
		if (prev)
			cr_assert_eq(n->prev, prev, "a prev link is wrong");
		out[count++] = keel__list_entry(n, struct item, link)->value;
		prev = n;
	}
	cr_assert_eq(keel__list_last(l), prev, "the last link is wrong");
	return count;
}

static void expect(const struct keel__list *l, const int *want, int n)
{
	int got[16];
	int count = collect(l, got, 16);

	cr_assert_eq(count, n, "%d items, expected %d", count, n);
	for (int i = 0; i < n; i++)
		cr_assert_eq(got[i], want[i], "item %d is %d, expected %d", i,
			     got[i], want[i]);
}

Test(list, zeroed_head_is_empty)
{
	struct keel__list l;

	memset(&l, 0, sizeof(l));
	cr_assert(keel__list_empty(&l));
	cr_assert_null(keel__list_pop_front(&l));
	cr_assert_null(keel__list_last(&l));
}

Test(list, keeps_order_at_both_ends)
{
	struct keel__list l = {0};
	struct item it[4] = {
	    {.value = 1}, {.value = 2}, {.value = 3}, {.value = 4}};

	keel__list_push_back(&l, &it[1].link);
	keel__list_push_back(&l, &it[2].link);
	keel__list_push_front(&l, &it[0].link);
	keel__list_push_back(&l, &it[3].link);
	expect(&l, (int[]){1, 2, 3, 4}, 4);
	cr_assert_eq(keel__list_pop_front(&l), &it[0].link);
	expect(&l, (int[]){2, 3, 4}, 3);
}

Test(list, removes_first_middle_and_last)
{
	struct keel__list l = {0};
	struct item it[5];

	for (int i = 0; i < 5; i++) {
		it[i].value = i;
		keel__list_push_back(&l, &it[i].link);
	}
	keel__list_remove(&l, &it[2].link);
	expect(&l, (int[]){0, 1, 3, 4}, 4);
	keel__list_remove(&l, &it[4].link);
	expect(&l, (int[]){0, 1, 3}, 3);
	keel__list_remove(&l, &it[0].link);
	expect(&l, (int[]){1, 3}, 2);
	/* Appending after removing the last must link after the new last. */
	keel__list_push_back(&l, &it[4].link);
	expect(&l, (int[]){1, 3, 4}, 3);
	keel__list_remove(&l, &it[1].link);
	keel__list_remove(&l, &it[3].link);
	keel__list_remove(&l, &it[4].link);
	cr_assert(keel__list_empty(&l));
}

Test(list, safe_walk_removes_as_it_goes)
{
	struct keel__list l = {0};
	struct item it[6];
	struct keel__link *n, *tmp;

	for (int i = 0; i < 6; i++) {
		it[i].value = i;
		keel__list_push_back(&l, &it[i].link);
	}
	keel__list_for_each_safe (n, tmp, &l) {
		if (keel__list_entry(n, struct item, link)->value % 2 == 0)
			keel__list_remove(&l, n);
	}
	expect(&l, (int[]){1, 3, 5}, 3);
}

Test(list, move_takes_every_item)
{
	struct keel__list from = {0}, to;
	struct item it[3] = {{.value = 7}, {.value = 8}, {.value = 9}};

	for (int i = 0; i < 3; i++)
		keel__list_push_back(&from, &it[i].link);
	keel__list_move(&to, &from);
	cr_assert(keel__list_empty(&from));
	expect(&to, (int[]){7, 8, 9}, 3);
}
