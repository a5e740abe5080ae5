/**
 * Where the service listens, and who may talk to it.
 *
 * A unix socket (the default, /run/netmangle.sock) is created mode 0600: only root, who may
 * attach programs anyway, can connect. One service per socket: a live one is never replaced
 * (the second `serve` names its pid), a stale file (nobody listening) is. A TCP listener must
 * be on loopback (unless --listen-any) and requires a bearer token.
 */
import { printable } from '../printable.js';
import { createHash, timingSafeEqual } from 'node:crypto';
import { chmodSync, lstatSync, readFileSync, statSync, unlinkSync } from 'node:fs';
import { request } from 'node:http';
import { isIP } from 'node:net';
import { fsUsageError, NetmangleError, UsageError } from '../errors.js';

export const DEFAULT_SOCKET = '/run/netmangle.sock';

export type ListenAddress = { kind: 'unix'; path: string } | { kind: 'tcp'; host: string; port: number };

/** `unix:PATH`, `HOST:PORT`, `[V6]:PORT`. */
export function parseListen(text: string): ListenAddress {
  if (text.startsWith('unix:')) {
    const path = text.slice(5);
    if (path === '') throw new UsageError('--listen unix: needs a path', { hint: `for example --listen unix:${DEFAULT_SOCKET}` });
    return { kind: 'unix', path };
  }
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:]+)):(\d+)$/.exec(text);
  if (!m) throw new UsageError(`--listen ${text}: not unix:PATH or ADDRESS:PORT`, { hint: 'for example --listen unix:/run/netmangle.sock or --listen 127.0.0.1:8474' });
  const host = m[1] ?? m[2]!;
  const port = Number(m[3]);
  // Port 0: the kernel picks a free one (the "listening on" line says which).
  if (port > 65535) throw new UsageError(`--listen ${text}: port ${port} is not 0 to 65535`);
  if (host !== 'localhost' && isIP(host) === 0) throw new UsageError(`--listen ${text}: ${host} is not an IP address`, { hint: 'give the address to listen on, e.g. 127.0.0.1 or ::1' });
  return { kind: 'tcp', host: host === 'localhost' ? '127.0.0.1' : host, port };
}

export function isLoopback(host: string): boolean {
  if (isIP(host) === 4) return host.startsWith('127.');
  const h = host.toLowerCase();
  return h === '::1' || /^::ffff:127\./.test(h);
}

export function describeAddress(a: ListenAddress): string {
  return a.kind === 'unix' ? `unix:${a.path}` : a.host.includes(':') ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`;
}

/** The bearer token in `file`: its first line, at least 16 characters. */
export function readToken(file: string): string {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw fsUsageError(err, `read the token file ${file}`);
  }
  const token = text.split('\n')[0]!.trim();
  if (token.length < 16) {
    throw new UsageError(`the token in ${file} is ${token.length === 0 ? 'empty' : `${token.length} characters long`}: use at least 16`, {
      hint: `make one with: head -c 32 /dev/urandom | base64 > ${file}; chmod 600 ${file}`,
    });
  }
  if ((statSync(file).mode & 0o077) !== 0) {
    process.stderr.write(`netmangle serve: warning: ${printable(`${file} is readable by other users than its owner (chmod 600 ${file})`)}\n`);
  }
  return token;
}

/** Compares a presented token with the expected one in constant time (digests of equal length). */
export function tokenMatches(presented: string, expected: string): boolean {
  const a = createHash('sha256').update(presented).digest();
  const b = createHash('sha256').update(expected).digest();
  return timingSafeEqual(a, b);
}

/** `unauthorized` (401) without a bearer token, `forbidden` (403) with a wrong one, undefined when it matches. */
export function checkAuthorization(header: string | undefined, token: string): 'unauthorized' | 'forbidden' | undefined {
  const m = /^Bearer\s+(\S+)\s*$/i.exec(header ?? '');
  if (!m) return 'unauthorized';
  return tokenMatches(m[1]!, token) ? undefined : 'forbidden';
}

/** Asks whatever listens at `address` for /version; the pid when it is a netmangle service. */
export function askVersion(address: ListenAddress, token?: string): Promise<{ listening: boolean; pid?: number }> {
  return new Promise((resolve) => {
    const req = request({
      ...(address.kind === 'unix' ? { socketPath: address.path } : { host: address.host, port: address.port }),
      path: '/version',
      method: 'GET',
      headers: token ? { authorization: `Bearer ${token}` } : {},
      timeout: 2000,
    }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => {
        try {
          const pid = (JSON.parse(body) as { pid?: unknown }).pid;
          resolve({ listening: true, pid: typeof pid === 'number' ? pid : undefined });
        } catch {
          resolve({ listening: true });
        }
      });
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', (err: NodeJS.ErrnoException) => {
      // Refused: a socket file nobody listens on. Anything else (a timeout): someone is there.
      resolve({ listening: !(err.code === 'ECONNREFUSED' || err.code === 'ENOENT') });
    });
    req.end();
  });
}

/**
 * Makes `path` free for our socket: nothing there, or a stale socket (removed). Refuses a live
 * one, naming the service's pid, and any file that is not a socket.
 */
export async function claimSocketPath(path: string): Promise<void> {
  let st;
  try {
    st = lstatSync(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  if (!st.isSocket()) throw new NetmangleError(`${path} exists and is not a socket`, { hint: 'remove it, or give another path with --listen unix:PATH' });
  const who = await askVersion({ kind: 'unix', path });
  if (who.listening) {
    throw new NetmangleError(
      who.pid !== undefined ? `netmangle serve (pid ${who.pid}) is already listening on ${path}` : `another program is already listening on ${path}`,
      { hint: who.pid !== undefined ? `one service per socket: stop it (kill ${who.pid}) or give this one --listen unix:OTHER_PATH` : 'give this service another path with --listen unix:PATH' },
    );
  }
  // A socket file nobody listens on: left by a service that was killed.
  try {
    unlinkSync(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}

/** Runs `listen` with umask 0177, so the socket is 0600 from the moment it exists; then makes sure. */
export async function withPrivateSocket<T>(path: string, listen: () => Promise<T>): Promise<T> {
  const old = process.umask(0o177);
  try {
    return await listen();
  } finally {
    process.umask(old);
    chmodSync(path, 0o600);
  }
}

/** Identity of the socket file we created, to remove it at exit only if it is still ours. */
export function socketIdentity(path: string): { dev: number; ino: number } {
  const st = lstatSync(path);
  return { dev: st.dev, ino: st.ino };
}

export function removeOwnSocket(path: string, id: { dev: number; ino: number }): void {
  try {
    const st = lstatSync(path);
    if (st.dev === id.dev && st.ino === id.ino) unlinkSync(path);
  } catch {
    // Gone already.
  }
}
