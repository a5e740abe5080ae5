/**
 * A client of `netmangle serve`, for tests in another process (or on another user's behalf):
 *
 *     import { Client } from 'netmangle/client';
 *     const client = new Client();                        // unix:/run/netmangle.sock
 *     await using fault = await client.attach('tcp.flags.push == 1 => drop',
 *       { dev: 'eth0', hook: 'egress', netns: 'h1' }, { name: 'no-push', first: 1 });
 *     (await fault.counters()).rules[0].acted;
 *
 * A RemoteFault has the library Fault's shape (seed, attachments, counters(), detach(),
 * `await using`), with counters() asynchronous since it asks the service. Errors are
 * ServiceError: the service's one-line message, its hint, the HTTP status and where (`at`).
 * Node's http module only: no dependency.
 */
import { readFileSync } from 'node:fs';
import { Agent, request, type IncomingHttpHeaders } from 'node:http';
// Types only (erased at build): the client loads none of the library's code.
import type { RuleCounts as LibraryRuleCounts, Target } from '../api/index.js';
import type { Hook } from '../rules/ast.js';
import type { FaultPatch, FaultSpec, TriggerFields as Triggers } from '../service/schemas.js';

export type { Hook, Target };

export const DEFAULT_SOCKET = '/run/netmangle.sock';

/**
 * The request bodies are the service's own shapes (POST /faults and each item of POST /populate;
 * PATCH): the trigger options of a fault as `netmangle run`'s for a one-line rule, and `ttl`, a
 * lease in seconds or a duration like "30s".
 */
export type { Triggers, FaultSpec, FaultPatch };

/** A rule's counters as the library gives them, and what its delay line holds. */
export interface RuleCounts extends LibraryRuleCounts {
  /** Packets the fault's delay line holds now (rules that delay or reorder). */
  held: number;
}

export interface FaultCounters {
  rules: RuleCounts[];
  delayLines: Array<Record<string, number | string>>;
  gsoPackets: number;
}

/** A fault as the service describes it. */
export interface FaultInfo extends Target, Triggers {
  name: string;
  rules: string[];
  seed: number;
  ttl?: number;
  expiresAt?: string;
  path: 'tcx' | 'link' | 'netlink';
  programs: number[];
  createdAt: string;
  warning?: string;
  counters?: FaultCounters;
}

export interface VersionInfo {
  version: string;
  api: number;
  pid: number;
  kernel: string;
  node: string;
  paths: Record<Hook, string>;
}

export interface ClientOptions {
  /** The service's unix socket (default $NETMANGLE_SOCKET, else /run/netmangle.sock). */
  socket?: string;
  /** A TCP service instead: `http://127.0.0.1:8474` (default $NETMANGLE_URL). */
  url?: string;
  /** The bearer token of a TCP service (default $NETMANGLE_TOKEN), or a file holding it. */
  token?: string;
  tokenFile?: string;
  /** Per request (default 30 s). */
  timeoutMs?: number;
}

/** What the service answered with an error status. */
export class ServiceError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly hint?: string,
    readonly at?: { field?: string; column?: number },
  ) {
    super(message);
    this.name = 'ServiceError';
  }
}

interface Response {
  status: number;
  headers: IncomingHttpHeaders;
  text: string;
}

export class Client {
  readonly socket?: string;
  readonly url?: URL;
  readonly #token?: string;
  readonly #timeoutMs: number;
  readonly #agent: Agent;

  constructor(opts: ClientOptions = {}) {
    const url = opts.url ?? (opts.socket === undefined ? process.env.NETMANGLE_URL : undefined);
    if (url) this.url = new URL(url);
    else this.socket = opts.socket ?? process.env.NETMANGLE_SOCKET ?? DEFAULT_SOCKET;
    const token = opts.token ?? (opts.tokenFile ? readFileSync(opts.tokenFile, 'utf8').split('\n')[0]!.trim() : process.env.NETMANGLE_TOKEN);
    if (token) this.#token = token;
    this.#timeoutMs = opts.timeoutMs ?? 30_000;
    this.#agent = new Agent({ keepAlive: true, maxSockets: 16 });
  }

  /** Closes idle keep-alive connections (a process with a client otherwise exits as usual: they are unref'd). */
  close(): void {
    this.#agent.destroy();
  }

  // ------------------------------------------------------------------------- faults

  /**
   * Attaches rules through the service, the way the library's attach() does in-process.
   * `options.name` names the fault (default: netmangle-PID-N); `ttl` gives it a lease.
   */
  async attach(rules: string | string[], target: Target, options: Triggers & { name?: string; seed?: number; ttl?: number | string } = {}): Promise<RemoteFault> {
    const { name, ...rest } = options;
    const info = await this.create({ name: name ?? autoName(), rules: typeof rules === 'string' ? rules : [...rules], ...target, ...rest });
    return new RemoteFault(this, info);
  }

  create(spec: FaultSpec): Promise<FaultInfo> {
    return this.json('POST', '/faults', spec);
  }

  list(): Promise<FaultInfo[]> {
    return this.json('GET', '/faults');
  }

  /** One fault, with its counters. */
  get(name: string): Promise<FaultInfo> {
    return this.json('GET', `/faults/${encodeURIComponent(name)}`);
  }

  /** A RemoteFault handle for a fault that already exists (e.g. made by populate). */
  async fault(name: string): Promise<RemoteFault> {
    return new RemoteFault(this, await this.get(name));
  }

  patch(name: string, patch: FaultPatch): Promise<{ fault: FaultInfo; replaced: 'atomically' | 'detach-attach' | 'unchanged' }> {
    return this.json('PATCH', `/faults/${encodeURIComponent(name)}`, patch);
  }

  async delete(name: string): Promise<void> {
    await this.json('DELETE', `/faults/${encodeURIComponent(name)}`);
  }

  renew(name: string, ttl?: number | string): Promise<FaultInfo> {
    return this.json('POST', `/faults/${encodeURIComponent(name)}/renew`, ttl === undefined ? undefined : { ttl });
  }

  populate(specs: FaultSpec[]): Promise<{ created: string[]; replaced: string[]; unchanged: string[]; faults: FaultInfo[] }> {
    return this.json('POST', '/populate', specs);
  }

  /** Detaches every fault of the service; their names. */
  async reset(): Promise<string[]> {
    return (await this.json<{ detached: string[] }>('POST', '/reset')).detached;
  }

  version(): Promise<VersionInfo> {
    return this.json('GET', '/version');
  }

  /** The Prometheus text of GET /metrics. */
  async metrics(): Promise<string> {
    const r = await this.send('GET', '/metrics');
    if (r.status !== 200) throw errorOf(r);
    return r.text;
  }

  // ------------------------------------------------------------------------- transport

  private async json<T>(method: string, path: string, body?: unknown): Promise<T> {
    const r = await this.send(method, path, body);
    if (r.status >= 400) throw errorOf(r);
    return (r.text === '' ? undefined : JSON.parse(r.text)) as T;
  }

  private send(method: string, path: string, body?: unknown): Promise<Response> {
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const headers: Record<string, string> = { accept: 'application/json' };
    if (payload) {
      headers['content-type'] = 'application/json';
      headers['content-length'] = String(payload.length);
    }
    if (this.#token) headers.authorization = `Bearer ${this.#token}`;
    const where = this.url
      ? { host: this.url.hostname.replace(/^\[|\]$/g, ''), port: Number(this.url.port || 80) }
      : { socketPath: this.socket! };
    return new Promise((resolve, reject) => {
      const req = request({ ...where, method, path, headers, agent: this.#agent, timeout: this.#timeoutMs }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, text: Buffer.concat(chunks).toString('utf8') }));
        res.on('error', reject);
      });
      req.on('timeout', () => req.destroy(new Error(`netmangle service: no answer to ${method} ${path} in ${this.#timeoutMs} ms`)));
      req.on('error', (err: NodeJS.ErrnoException) => {
        const at = this.url ? this.url.host : this.socket!;
        if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') {
          reject(new ServiceError(0, `no netmangle service at ${at} (${err.code})`, 'start one with: netmangle serve'));
        } else if (err.code === 'EACCES') {
          reject(new ServiceError(0, `cannot connect to ${at}: permission denied`, 'the socket is mode 0600: run as root'));
        } else reject(err);
      });
      req.end(payload);
    });
  }
}

let autoCount = 0;
function autoName(): string {
  autoCount += 1;
  return `netmangle-${process.pid}-${autoCount}`;
}

function errorOf(r: Response): ServiceError {
  try {
    const e = JSON.parse(r.text) as { error?: string; hint?: string; at?: { field?: string; column?: number } };
    return new ServiceError(r.status, e.error ?? `HTTP ${r.status}`, e.hint, e.at);
  } catch {
    return new ServiceError(r.status, `HTTP ${r.status}: ${r.text.slice(0, 200)}`);
  }
}

/**
 * A fault attached by the service, with the library Fault's shape: `await using` detaches it.
 * `seed` and `attachments` are as the service answered at creation (or at the last update()).
 */
export class RemoteFault implements AsyncDisposable {
  #info: FaultInfo;
  #detached = false;

  constructor(readonly client: Client, info: FaultInfo) {
    this.#info = info;
  }

  get name(): string {
    return this.#info.name;
  }

  get seed(): number {
    return this.#info.seed;
  }

  get info(): FaultInfo {
    return this.#info;
  }

  /** One entry per program, as the library's Fault.attachments. */
  get attachments(): Array<{ dev: string; hook: Hook; netns?: string; path: string; programId: number }> {
    const i = this.#info;
    return i.programs.map((programId) => ({ dev: i.dev, hook: i.hook, ...(i.netns === undefined ? {} : { netns: i.netns }), path: i.path, programId }));
  }

  get attached(): boolean {
    return !this.#detached;
  }

  async counters(): Promise<FaultCounters> {
    const info = await this.client.get(this.name);
    return info.counters!;
  }

  /** Changes rules, triggers or the lease; says whether the program was swapped in one step. */
  async update(patch: FaultPatch): Promise<'atomically' | 'detach-attach' | 'unchanged'> {
    const r = await this.client.patch(this.name, patch);
    this.#info = r.fault;
    return r.replaced;
  }

  /**
   * The library Fault's replace(): other rules (and triggers) on the same target; `atomic` when
   * the new program took the old one's place in one step. The target cannot change here.
   */
  async replace(rules: string | string[], target?: Target, options: Triggers & { seed?: number } = {}): Promise<{ atomic: boolean }> {
    const patch: FaultPatch = { rules: typeof rules === 'string' ? rules : [...rules], ...options };
    if (target) Object.assign(patch, target);
    return { atomic: (await this.update(patch)) === 'atomically' };
  }

  async renew(ttl?: number | string): Promise<void> {
    this.#info = await this.client.renew(this.name, ttl);
  }

  /** Detaches the fault. Idempotent: a fault already gone (expired, reset) is not an error. */
  async detach(): Promise<void> {
    if (this.#detached) return;
    try {
      await this.client.delete(this.name);
    } catch (err) {
      if (!(err instanceof ServiceError && err.status === 404)) throw err;
    }
    this.#detached = true;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.detach();
  }
}
