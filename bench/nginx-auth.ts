/**
 * The auth_http server behind nginx's mail proxy in the benchmark, run as its
 * own process (like mailgate) with `node --import tsx bench/nginx-auth.ts
 * CONFIG.json`. It prints `listening PORT` on stdout once ready.
 *
 * What it does per request (nginx sends one HTTP/1.0 request per login, on a
 * new connection, with Auth-User / Auth-Pass URL-escaped):
 *
 *  1. Looks the user up. Unknown user: one argon2 verification against a
 *     dummy hash, then refuse (the same cost as mailgate's refusal).
 *  2. Verified-login cache: if HMAC(user, password) was verified before, OK
 *     at once (the most favourable auth server for the warm comparison: no
 *     argon2, no database).
 *  3. Otherwise one argon2id verification with mailgate's default parameters
 *     (19456 KiB, t=2, p=1), at most one per core but one at a time (as mailgate's
 *     hash_concurrency = 0), at most 64 queued (as hash_queue); on success
 *     the cache remembers it.
 *  4. OK answers send nginx to Dovecot's plain IMAP port and make it log in
 *     as `user*master` with the master password (Auth-User / Auth-Pass), as
 *     mailgate does with the master user: the user never learns an upstream
 *     password. Failures answer `Auth-Wait: 0`, so nginx closes the client
 *     connection (nginx's only alternative is waiting whole seconds).
 */
import { createHmac, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { availableParallelism } from 'node:os';
import argon2 from 'argon2';

interface AuthConfig {
  host: string;
  upstream: { host: string; port: number };
  master: { user: string; password: string; separator: string };
  argon2: { memoryKib: number; iterations: number; parallelism: number };
  users: Record<string, string>;
}

const config = JSON.parse(readFileSync(process.argv[2]!, 'utf8')) as AuthConfig;
const hashOptions: argon2.HashOptions = {
  type: argon2.argon2id,
  memoryCost: config.argon2.memoryKib,
  timeCost: config.argon2.iterations,
  parallelism: config.argon2.parallelism,
};

// --- bounded hashing, as mailgate's PasswordHasher
const slots = Math.max(1, availableParallelism() - 1);
const maxQueue = 64;
let running = 0;
const waiting: Array<() => void> = [];
async function withSlot<T>(work: () => Promise<T>): Promise<T> {
  if (running >= slots) {
    if (waiting.length >= maxQueue) throw new Error('busy');
    await new Promise<void>((resolve) => waiting.push(resolve));
  } else {
    running += 1;
  }
  try {
    return await work();
  } finally {
    const next = waiting.shift();
    if (next) next();
    else running -= 1;
  }
}

const hmacKey = randomBytes(32);
const cacheKey = (user: string, pass: string) => createHmac('sha256', hmacKey).update(user).update('\0').update(pass).digest('base64url');
const verified = new Set<string>();
const hashes = new Map<string, string>();
let dummyHash = '';

async function check(user: string, pass: string): Promise<boolean> {
  const key = cacheKey(user, pass);
  if (verified.has(key)) return true;
  const hash = hashes.get(user);
  const ok = await withSlot(() => argon2.verify(hash ?? dummyHash, pass).catch(() => false));
  if (ok && hash) {
    verified.add(key);
    return true;
  }
  return false;
}

function decode(v: string | string[] | undefined): string {
  const s = Array.isArray(v) ? v[0] ?? '' : v ?? '';
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

async function main(): Promise<void> {
  dummyHash = await argon2.hash(randomBytes(16).toString('hex'), hashOptions);
  const entries = Object.entries(config.users);
  let next = 0;
  await Promise.all(
    Array.from({ length: slots }, async () => {
      while (next < entries.length) {
        const [user, pass] = entries[next++]!;
        hashes.set(user, await argon2.hash(pass, hashOptions));
      }
    }),
  );

  const server = http.createServer((req, res) => {
    const user = decode(req.headers['auth-user']);
    const pass = decode(req.headers['auth-pass']);
    check(user, pass).then(
      (ok) => {
        if (ok) {
          res.writeHead(200, {
            'Auth-Status': 'OK',
            'Auth-Server': config.upstream.host,
            'Auth-Port': String(config.upstream.port),
            'Auth-User': `${user}${config.master.separator}${config.master.user}`,
            'Auth-Pass': config.master.password,
          });
        } else {
          res.writeHead(200, { 'Auth-Status': 'Invalid login or password', 'Auth-Wait': '0' });
        }
        res.end();
      },
      () => {
        res.writeHead(200, { 'Auth-Status': 'Temporary server problem, try again later', 'Auth-Error-Code': '451 4.3.0', 'Auth-Wait': '0' });
        res.end();
      },
    );
  });
  server.listen({ host: config.host, port: 0 }, () => {
    const addr = server.address() as { port: number };
    process.stdout.write(`listening ${addr.port}\n`);
  });
  const stop = () => server.close(() => process.exit(0));
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

main().catch((err: unknown) => {
  process.stderr.write(`nginx-auth: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
