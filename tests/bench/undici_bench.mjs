// The undici side of tests/bench/bench.py: N GETs of one URL through an
// undici Pool of C keep-alive connections (C requests in flight, no
// pipelining), each body read to its end and dropped. With --url-file, the
// requests go round-robin to the URLs listed in FILE (one a line), through an
// undici Agent that keeps a pool of at most C connections per origin; C
// requests are in flight in all.
//
//   node undici_bench.mjs --url URL --requests N --connections C [--ca FILE]
//   node undici_bench.mjs --url-file FILE --requests N --connections C
//
// Prints one JSON line: {requests, ok, failed, bytes, seconds, statuses,
// errors}. `seconds` runs from the first request to the last body's end, so
// node's start-up and module loading are not counted. A measurement, not a
// test: the exit status is 0 whenever the run itself completed.

import { readFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { Agent, Pool } from 'undici';

const MAX_ERRORS_KEPT = 5;

function options() {
    const { values } = parseArgs({
        options: {
            url: { type: 'string' },
            'url-file': { type: 'string' },
            requests: { type: 'string', default: '1000' },
            connections: { type: 'string', default: '64' },
            ca: { type: 'string' },
        },
    });
    if (!values.url === !values['url-file']) {
        throw new Error('give one of --url and --url-file');
    }
    const urls = values.url
        ? [values.url]
        : readFileSync(values['url-file'], 'utf8').split('\n').filter((l) => l.length > 0);
    return {
        urls: urls.map((u) => new URL(u)),
        requests: Number.parseInt(values.requests, 10),
        connections: Number.parseInt(values.connections, 10),
        ca: values.ca ? readFileSync(values.ca) : undefined,
    };
}

async function main() {
    const opt = options();
    // The connect options carry the test CA for https; undici verifies
    // certificates (and the host name) by default.
    const settings = {
        connections: opt.connections,
        pipelining: 1,
        connect: opt.ca ? { ca: opt.ca } : undefined,
    };
    const single = opt.urls.length === 1;
    const pool = single ? new Pool(opt.urls[0].origin, settings) : new Agent(settings);
    const targets = opt.urls.map((u) => ({ origin: u.origin, path: u.pathname + u.search }));
    const result = { requests: opt.requests, ok: 0, failed: 0, bytes: 0, statuses: {}, errors: [] };
    let issued = 0;

    // One worker per connection: each keeps exactly one request in flight,
    // so the concurrency is C as for curl's --parallel-max and fetchd's
    // per-host limit.
    async function worker() {
        while (issued < opt.requests) {
            const target = targets[issued % targets.length];
            issued++;
            try {
                const { statusCode, body } = await pool.request({
                    origin: target.origin,
                    path: target.path,
                    method: 'GET',
                });
                for await (const chunk of body) {
                    result.bytes += chunk.length;
                }
                result.statuses[statusCode] = (result.statuses[statusCode] || 0) + 1;
                if (statusCode === 200) {
                    result.ok++;
                } else {
                    result.failed++;
                }
            } catch (err) {
                result.failed++;
                if (result.errors.length < MAX_ERRORS_KEPT) {
                    result.errors.push(String(err && (err.code || err.message) || err));
                }
            }
        }
    }

    const start = performance.now();
    await Promise.all(Array.from({ length: opt.connections }, worker));
    result.seconds = (performance.now() - start) / 1000;
    await pool.close();
    process.stdout.write(JSON.stringify(result) + '\n');
}

main().catch((err) => {
    process.stderr.write(`undici_bench: ${err && err.stack || err}\n`);
    process.exit(1);
});
