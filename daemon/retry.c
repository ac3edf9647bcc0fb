/* retry — the retry policy; see retry.h. */
#include "retry.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"

void retry_policy_init(retry_policy_t *p)
{
    p->base_ms = RETRY_DEFAULT_BASE_MS;
    p->max_ms = RETRY_DEFAULT_MAX_MS;
    p->after_max_ms = RETRY_DEFAULT_AFTER_MAX_MS;
}

int retry_idempotent(const char *m)
{
    static const char *const ok[] = {"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
        if (strcmp(m, ok[i]) == 0)
            return 1;
    return 0;
}

int retry_error_retryable(int err)
{
    return err == ERR_CONNECT_REFUSED || err == ERR_CONNECT_TIMEOUT;
}

int retry_status_retryable(int status, const char *method)
{
    if (status == 429 || status == 503)
        return 1;
    return (status == 502 || status == 504) && retry_idempotent(method);
}

uint64_t retry_backoff_ms(const retry_policy_t *p, unsigned done, retry_random_fn rnd,
                          void *rnd_data)
{
    uint64_t d = p->base_ms << (done < 16 ? done : 16);
    if (d > p->max_ms)
        d = p->max_ms;
    /* Jitter in [d/2, d) keeps a crowd of retries from arriving in step. */
    return d / 2 + (uint64_t)(rnd(rnd_data) * (double)(d / 2));
}

int64_t retry_after_ms(const char *v, time_t now)
{
    struct tm tm;
    char *end;
    long long secs;

    if (v == NULL)
        return -1;
    while (*v == ' ' || *v == '\t')
        v++;
    if (isdigit((unsigned char)*v)) {
        errno = 0;
        secs = strtoll(v, &end, 10);
        if (errno || secs < 0 || (*end != '\0' && *end != ' '))
            return -1;
        return secs > INT64_MAX / 1000 ? INT64_MAX : secs * 1000;
    }
    memset(&tm, 0, sizeof(tm));
    end = strptime(v, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    if (end == NULL)
        return -1;
    secs = (long long)timegm(&tm) - (long long)now;
    return secs > 0 ? secs * 1000 : 0;
}

uint64_t retry_delay_ms(const retry_policy_t *p, const char *v, time_t now, unsigned done,
                        retry_random_fn rnd, void *rnd_data)
{
    int64_t after = retry_after_ms(v, now);

    if (after < 0)
        return retry_backoff_ms(p, done, rnd, rnd_data);
    return (uint64_t)after > p->after_max_ms ? p->after_max_ms : (uint64_t)after;
}
