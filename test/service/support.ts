/**
 * A real `netmangle serve` process for the service tests, a raw HTTP request helper (status,
 * headers and body as the wire has them), and what is on the hooks of an interface, from the
 * kernel (BPF_PROG_QUERY on the tcx hooks, the XDP link listing).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { request, type IncomingHttpHeaders } from 'node:http';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { queryProgs } from '../../src/kernel/info.js';
import { inNetns } from '../../src/kernel/netns.js';
import { ifindexIn } from '../kernel/bpf-fixtures.js';

export const ROOT = resolve(fileURLToPath(import.meta.url), '../../../..');
export const CLI = join(ROOT, 'bin', 'netmangle');

export interface HttpResult {
  status: number;
  headers: IncomingHttpHeaders;
  text: string;
  /** The body parsed as JSON (undefined when it is not JSON). */
  json: any;
}

export type Where = { socketPath: string } | { host: string; port: number };

/** One request; `body` a value (sent as JSON) or a string/Buffer sent as it is. */
export function http(where: Where, method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<HttpResult> {
  const payload = body === undefined ? undefined : typeof body === 'string' || Buffer.isBuffer(body) ? Buffer.from(body) : Buffer.from(JSON.stringify(body));
  const h: Record<string, string> = { ...headers };
  if (payload) {
    h['content-type'] ??= 'application/json';
    h['content-length'] = String(payload.length);
  }
  return new Promise((resolvePromise, reject) => {
    const req = request({ ...where, method, path, headers: h, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let json: unknown;
        try {
          json = JSON.parse(text);
        } catch {
          json = undefined;
        }
        resolvePromise({ status: res.statusCode ?? 0, headers: res.headers, text, json });
      });
    });
    req.on('error', reject);
    req.end(payload);
  });
}

/**
 * A request written on a bare socket while its answer is read: for a body the service refuses
 * before reading it all (413), whose answer arrives while the body is still being sent (node's
 * http client gives up at the broken pipe). Status and body of the answer.
 */
export function rawPost(where: Where, path: string, body: Buffer): Promise<{ status: number; json: any }> {
  return new Promise((resolvePromise, reject) => {
    const sock = 'socketPath' in where ? connect(where.socketPath) : connect(where.port, where.host);
    const chunks: Buffer[] = [];
    sock.on('data', (c: Buffer) => chunks.push(c));
    sock.on('error', () => { /* the broken pipe of the unread body */ });
    sock.on('close', () => {
      const text = Buffer.concat(chunks).toString('utf8');
      const m = /^HTTP\/1\.1 (\d+)/.exec(text);
      if (!m) return reject(new Error(`no HTTP answer: ${JSON.stringify(text.slice(0, 200))}`));
      const payload = text.slice(text.indexOf('\r\n\r\n') + 4);
      let json: unknown;
      try {
        json = JSON.parse(payload);
      } catch {
        json = undefined;
      }
      resolvePromise({ status: Number(m[1]), json });
    });
    sock.write(`POST ${path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n`);
    // The body in pieces, stopping once the answer is there (writing on would break the pipe
    // and, with it, the reading of the answer).
    let sent = 0;
    const more = (): void => {
      if (chunks.length > 0 || sock.destroyed) return;
      if (sent >= body.length) return void sock.end();
      const piece = body.subarray(sent, sent + 16384);
      sent += piece.length;
      if (sock.write(piece)) setImmediate(more);
      else sock.once('drain', more);
    };
    setTimeout(more, 100);
  });
}

export interface ServiceProcess {
  proc: ChildProcess;
  socket: string;
  where: Where;
  dir: string;
  /** What the service wrote so far. */
  stdout(): string;
  stderr(): string;
  req(method: string, path: string, body?: unknown, headers?: Record<string, string>): Promise<HttpResult>;
  /** Waits for the process to exit; its code or signal. */
  exited(): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** SIGTERM, wait; removes the temporary directory. */
  stop(): Promise<void>;
}

/**
 * Starts `netmangle serve` with `args` (default: a unix socket in a fresh temporary directory)
 * and waits for its "listening" line.
 */
export async function startService(args?: string[], opts: { dir?: string } = {}): Promise<ServiceProcess> {
  const dir = opts.dir ?? mkdtempSync(join(tmpdir(), 'nm-svc-'));
  const socket = join(dir, 'netmangle.sock');
  const argv = args ?? ['--listen', `unix:${socket}`];
  const proc = spawn(process.execPath, [CLI, 'serve', ...argv], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  proc.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
  proc.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => proc.once('exit', (code, signal) => r({ code, signal })));
  const listening = await new Promise<string>((resolvePromise, reject) => {
    const timer = setTimeout(() => reject(new Error(`serve did not start in 20 s; stderr: ${err}`)), 20_000);
    const check = () => {
      const line = out.split('\n').find((l) => l.startsWith('listening on '));
      if (line) {
        clearTimeout(timer);
        resolvePromise(line);
      }
    };
    proc.stdout!.on('data', check);
    void exit.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`serve exited (${code ?? signal}) before listening; stderr: ${err}`));
    });
  });
  const tcp = /^listening on (?:\[([^\]]+)\]|([\d.]+)):(\d+)/.exec(listening);
  const where: Where = tcp ? { host: tcp[1] ?? tcp[2]!, port: Number(tcp[3]) } : { socketPath: socket };
  let stopped = false;
  return {
    proc, socket, where, dir,
    stdout: () => out,
    stderr: () => err,
    req: (method, path, body, headers) => http(where, method, path, body, headers),
    exited: () => exit,
    async stop() {
      if (stopped) return;
      stopped = true;
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      const timer = setTimeout(() => proc.kill('SIGKILL'), 15_000);
      await exit;
      clearTimeout(timer);
      if (!opts.dir) rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Program ids on the tcx ingress and egress hooks of `dev` in namespace `ns`, from the kernel. */
export function tcxPrograms(ns: string, dev: string): number[] {
  const ifindex = ifindexIn(ns, dev);
  return inNetns(ns, () => [...queryProgs(ifindex, 'tcx_ingress').progIds, ...queryProgs(ifindex, 'tcx_egress').progIds]);
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
