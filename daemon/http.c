/* http — shared HTTP syntax helpers; see http.h. */
#include "http.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

/* RFC 9110 tchar: 1 for the bytes a token may hold. */
static const unsigned char tchar[256] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1, ['+'] = 1,
    ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1,  ['~'] = 1, ['0'] = 1,
    ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1,  ['7'] = 1, ['8'] = 1,
    ['9'] = 1, ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1,  ['F'] = 1, ['G'] = 1,
    ['H'] = 1, ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1,  ['N'] = 1, ['O'] = 1,
    ['P'] = 1, ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1,  ['V'] = 1, ['W'] = 1,
    ['X'] = 1, ['Y'] = 1, ['Z'] = 1, ['a'] = 1, ['b'] = 1, ['c'] = 1,  ['d'] = 1, ['e'] = 1,
    ['f'] = 1, ['g'] = 1, ['h'] = 1, ['i'] = 1, ['j'] = 1, ['k'] = 1,  ['l'] = 1, ['m'] = 1,
    ['n'] = 1, ['o'] = 1, ['p'] = 1, ['q'] = 1, ['r'] = 1, ['s'] = 1,  ['t'] = 1, ['u'] = 1,
    ['v'] = 1, ['w'] = 1, ['x'] = 1, ['y'] = 1, ['z'] = 1,
};

int http_is_token(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    unsigned ok = 1;

    if (n == 0)
        return 0;
    /* No early exit: names are short, and a branch-free loop is cheaper. */
    for (size_t i = 0; i < n; i++)
        ok &= tchar[u[i]];
    return (int)ok;
}

/* Word-at-a-time: a word with a byte below 0x20, or equal to 0x7f, leaves
 * a high bit set in the test (the classic "has less than" and "has zero"
 * tricks; they may also flag a word without one, never miss one, so only a
 * flagged word is looked at byte by byte). HTAB is below 0x20 and allowed: a hit sends the word to
 * the byte loop. */
#define ONES  0x0101010101010101ull
#define HIGHS 0x8080808080808080ull

static int bad_byte(unsigned char c)
{
    return (c < 0x20 && c != '\t') || c == 0x7f;
}

int http_is_field_value(const char *s, size_t n)
{
    size_t i = 0;

    for (; i + 8 <= n; i += 8) {
        uint64_t w, y;
        memcpy(&w, s + i, 8);
        y = w ^ (0x7f * ONES);
        if ((((w - 0x20 * ONES) & ~w) | ((y - ONES) & ~y)) & HIGHS) {
            for (size_t k = i; k < i + 8; k++)
                if (bad_byte((unsigned char)s[k]))
                    return 0;
        }
    }
    for (; i < n; i++)
        if (bad_byte((unsigned char)s[i]))
            return 0;
    return 1;
}

uint64_t http_hash(const char *s)
{
    uint64_t h = 14695981039346656037ull; /* FNV-1a 64 offset basis */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* Transfer codings decoded besides chunked; NULL-terminated. */
static const char *const te_decodable[] = {"gzip", "x-gzip", "deflate", NULL};

int http_te_decodable(const char *name, size_t n)
{
    for (size_t i = 0; te_decodable[i] != NULL; i++)
        if (strlen(te_decodable[i]) == n && strncasecmp(te_decodable[i], name, n) == 0)
            return 1;
    return 0;
}

static int is_ows(char c)
{
    return c == ' ' || c == '\t';
}

/* One member of a comma-separated list starting at p: sets *m and *mlen (OWS
 * trimmed; RFC 9110 5.6.1 allows empty members, which come back with mlen 0)
 * and *more to 1 when another member follows. Returns where the next starts. */
static const char *list_member(const char *p, const char *end, const char **m, size_t *mlen,
                               int *more)
{
    const char *comma = memchr(p, ',', (size_t)(end - p));

    *more = comma != NULL;
    if (comma == NULL)
        comma = end;
    while (p < comma && is_ows(*p))
        p++;
    *m = p;
    *mlen = (size_t)(comma - p);
    while (*mlen > 0 && is_ows(p[*mlen - 1]))
        (*mlen)--;
    return *more ? comma + 1 : end;
}

static int clip(size_t n)
{
    return n > 40 ? 40 : (int)n;
}

int http_check_transfer_codings(const char *v, size_t n, int *chunked, char *why, size_t whylen)
{
    const char *end = v + n, *p = v, *m;
    size_t mlen, codings = 0;
    int more = 1;

    *chunked = 0;
    while (more) {
        size_t name = 0;
        int is_chunked;
        p = list_member(p, end, &m, &mlen, &more);
        if (mlen == 0)
            continue;
        while (name < mlen && m[name] != ';' && !is_ows(m[name]))
            name++;
        codings++;
        if (!http_is_token(m, name)) {
            snprintf(why, whylen, "invalid transfer coding '%.*s'", clip(mlen), m);
            return -1;
        }
        is_chunked = name == 7 && strncasecmp(m, "chunked", 7) == 0;
        if (!is_chunked && !http_te_decodable(m, name)) {
            snprintf(why, whylen, "unknown transfer coding '%.*s'", clip(name), m);
            return -1;
        }
        if (*chunked) {
            snprintf(why, whylen, "transfer coding 'chunked' is not the last one");
            return -1;
        }
        if (is_chunked && mlen != name) {
            snprintf(why, whylen, "transfer coding 'chunked' with parameters");
            return -1;
        }
        *chunked = is_chunked;
    }
    if (codings == 0) {
        snprintf(why, whylen, "empty Transfer-Encoding");
        return -1;
    }
    return 0;
}

int http_parse_content_length(const char *v, size_t n, uint64_t *value, int *list)
{
    const char *end = v + n, *p = v, *m;
    size_t mlen, members = 0;
    int more = 1;

    *list = 0;
    while (more) {
        uint64_t x = 0;
        p = list_member(p, end, &m, &mlen, &more);
        if (mlen == 0 || mlen > 19)
            return -1;
        for (size_t i = 0; i < mlen; i++) {
            if (m[i] < '0' || m[i] > '9')
                return -1;
            x = x * 10 + (uint64_t)(m[i] - '0');
        }
        if (members++ > 0 && x != *value)
            return -1;
        *value = x;
    }
    *list = members > 1;
    return members > 0 ? 0 : -1;
}
