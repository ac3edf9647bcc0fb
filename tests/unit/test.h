/* A minimal unit-test harness: CHECK() records a failure and goes on;
 * test_main() runs the listed tests and prints "N passed, N failed". */
#ifndef FETCHD_TEST_H
#define FETCHD_TEST_H

#include <stdio.h>
#include <string.h>

static int test_failures_;
static int test_checks_failed_in_case_;

#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
            test_checks_failed_in_case_++;                                           \
        }                                                                            \
    } while (0)

#define CHECK_INT(a, b)                                                                           \
    do {                                                                                          \
        long long a_ = (long long)(a), b_ = (long long)(b);                                       \
        if (a_ != b_) {                                                                           \
            fprintf(stderr, "%s:%d: CHECK failed: %s == %s (%lld != %lld)\n", __FILE__, __LINE__, \
                    #a, #b, a_, b_);                                                              \
            test_checks_failed_in_case_++;                                                        \
        }                                                                                         \
    } while (0)

#define CHECK_STR(a, b)                                                                     \
    do {                                                                                    \
        const char *a_ = (a), *b_ = (b);                                                    \
        if (a_ == NULL || b_ == NULL || strcmp(a_, b_) != 0) {                              \
            fprintf(stderr, "%s:%d: CHECK failed: %s == %s (\"%s\" != \"%s\")\n", __FILE__, \
                    __LINE__, #a, #b, a_ ? a_ : "(null)", b_ ? b_ : "(null)");              \
            test_checks_failed_in_case_++;                                                  \
        }                                                                                   \
    } while (0)

typedef struct test_case {
    const char *name;
    void (*fn)(void);
} test_case_t;

#define TEST_CASE(fn) \
    {                 \
#fn, fn       \
    }

static inline int test_main(const test_case_t *cases, size_t n)
{
    int passed = 0, failed = 0;
    for (size_t i = 0; i < n; i++) {
        test_checks_failed_in_case_ = 0;
        cases[i].fn();
        if (test_checks_failed_in_case_ == 0) {
            printf("ok   %s\n", cases[i].name);
            passed++;
        } else {
            printf("FAIL %s\n", cases[i].name);
            failed++;
        }
    }
    test_failures_ = failed;
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}

#define TEST_MAIN(...)                                                \
    int main(void)                                                    \
    {                                                                 \
        static const test_case_t cases_[] = {__VA_ARGS__};            \
        return test_main(cases_, sizeof(cases_) / sizeof(cases_[0])); \
    }

#endif
