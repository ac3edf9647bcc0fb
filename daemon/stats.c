/* stats — counters and live object counts; see stats.h. */
#include "stats.h"

#include <assert.h>
#include <string.h>

static const char *const obj_labels[] = {
#define X(e, label) label,
    STATS_OBJ_MAP(X)
#undef X
};

static const char *const close_labels[] = {
#define X(e, label) label,
    STATS_CLOSE_MAP(X)
#undef X
};

static const char *const lenient_labels[] = {
#define X(e, label) label,
    STATS_LENIENT_MAP(X)
#undef X
};

static const char *const result_labels[] = {"done", "failed", "cancelled"};

void stats_init(stats_t *s)
{
    memset(s, 0, sizeof(*s));
}

void stats_obj_destroyed(stats_t *s, stats_obj_t t)
{
    assert(s->objects[t] > 0);
    s->objects[t]--;
}

void stats_observe_duration(stats_t *s, double seconds)
{
    static const double bounds[STATS_NDURATION] = STATS_DURATION_BUCKETS;
    for (int i = 0; i < STATS_NDURATION; i++) {
        if (seconds <= bounds[i]) {
            s->duration_buckets[i]++;
            break;
        }
    }
    s->duration_count++;
    s->duration_sum += seconds;
}

const char *stats_obj_label(stats_obj_t t)
{
    return obj_labels[t];
}

const char *stats_close_label(stats_close_t r)
{
    return close_labels[r];
}

const char *stats_result_label(stats_result_t r)
{
    return result_labels[r];
}

const char *stats_lenient_label(stats_lenient_t k)
{
    return lenient_labels[k];
}
