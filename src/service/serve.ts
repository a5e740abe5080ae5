/**
 * The life of `netmangle serve`: claim the socket (or port), answer requests, and on SIGTERM,
 * SIGINT or SIGHUP stop listening and detach everything it attached before exiting.
 *
 * After `kill -9` the kernel does the detaching for faults on BPF links (tcx, XDP links): the
 * links die with the process's file descriptors. Faults attached through netlink (kernels
 * without tcx, 6.1 and older) stay until removed; the service says so when it starts.
 */
import { printable } from '../printable.js';
import type { FastifyInstance } from 'fastify';
import { NetmangleError, UsageError } from '../errors.js';
import { probeFeaturesCached } from '../kernel/probe.js';
import { libraryAttacher } from './attacher.js';
import { FaultTable } from './faults.js';
import {
  askVersion, claimSocketPath, describeAddress, isLoopback, readToken, removeOwnSocket, socketIdentity, withPrivateSocket, type ListenAddress,
} from './listen.js';
import { buildServer } from './server.js';

export interface ServeOptions {
  address: ListenAddress;
  tokenFile?: string;
  listenAny?: boolean;
  version: string;
  /** Where the service says what it does (stdout; the first line starts with "listening"). */
  log?: (line: string) => void;
}

export interface RunningService {
  app: FastifyInstance;
  table: FaultTable;
  address: ListenAddress;
  /** Stops listening and detaches every fault; resolves with their names. Idempotent. */
  stop(): Promise<string[]>;
}

function checkOptions(o: ServeOptions): string | undefined {
  if (o.address.kind === 'unix') {
    if (o.tokenFile !== undefined) throw new UsageError('--token-file is for TCP listeners; a unix socket is guarded by its mode (0600, root only)');
    if (o.listenAny) throw new UsageError('--listen-any is for TCP listeners');
    return undefined;
  }
  if (o.tokenFile === undefined) {
    throw new UsageError(`--listen ${describeAddress(o.address)} needs --token-file FILE: every request must then carry Authorization: Bearer TOKEN`, {
      hint: 'make one with: head -c 32 /dev/urandom | base64 > /root/netmangle.token; chmod 600 /root/netmangle.token',
    });
  }
  if (!isLoopback(o.address.host) && !o.listenAny) {
    throw new UsageError(`${o.address.host} is not a loopback address: anyone who can reach it could attach programs to this host's interfaces`, {
      hint: 'listen on 127.0.0.1 or ::1, or add --listen-any if you mean it',
    });
  }
  return readToken(o.tokenFile);
}

export async function startService(o: ServeOptions): Promise<RunningService> {
  const token = checkOptions(o);
  if (typeof process.getuid === 'function' && process.getuid() !== 0) {
    throw new NetmangleError('netmangle serve needs root (CAP_BPF and CAP_NET_ADMIN) to attach programs', { hint: 'run it with sudo' });
  }
  const log = o.log ?? ((line: string) => process.stdout.write(`${printable(line)}\n`));
  const table = new FaultTable(libraryAttacher, log);
  const app = await buildServer({ table, token, version: o.version });
  const a = o.address;
  let socketId: { dev: number; ino: number } | undefined;
  try {
    if (a.kind === 'unix') {
      await claimSocketPath(a.path);
      await withPrivateSocket(a.path, () => app.listen({ path: a.path }));
      socketId = socketIdentity(a.path);
    } else {
      await app.listen({ host: a.host, port: a.port });
    }
  } catch (err) {
    await app.close().catch(() => {});
    if ((err as NodeJS.ErrnoException).code === 'EADDRINUSE') {
      const who = await askVersion(a, token);
      throw new NetmangleError(`${describeAddress(a)} is in use${who.pid !== undefined ? ` by netmangle serve (pid ${who.pid})` : ''}`, {
        hint: who.pid !== undefined ? `one service per address: stop it (kill ${who.pid}) or listen elsewhere` : 'choose another port',
      });
    }
    throw err;
  }
  const bound = a.kind === 'tcp' && a.port === 0 ? { ...a, port: (app.server.address() as { port: number }).port } : a;
  log(`listening on ${describeAddress(bound)} (pid ${process.pid})${token ? ', bearer token required' : ''}`);
  const paths = probeFeaturesCached().attach;
  const netlinkHooks = Object.entries(paths).filter(([, p]) => p === 'netlink').map(([h]) => h);
  if (netlinkHooks.length > 0) {
    process.stderr.write(`netmangle serve: warning: this kernel attaches at ${netlinkHooks.join(', ')} through netlink, not BPF links: faults there are detached on SIGTERM, but stay attached if the service is killed with SIGKILL\n`);
  }

  let stopping: Promise<string[]> | undefined;
  const stop = (): Promise<string[]> => {
    stopping ??= (async () => {
      // Stop taking requests first, so nothing attaches after the table is emptied.
      await app.close().catch(() => {});
      const names = await table.close();
      if (socketId && a.kind === 'unix') removeOwnSocket(a.path, socketId);
      return names;
    })();
    return stopping;
  };
  return { app, table, address: bound, stop };
}

/** Runs until a signal; exits 0 after detaching everything (1 when a detach failed). */
export async function serveUntilSignal(o: ServeOptions): Promise<void> {
  const service = await startService(o);
  const log = o.log ?? ((line: string) => process.stdout.write(`${printable(line)}\n`));
  // A bug must not leave programs attached behind a dead service (netlink attachments would stay).
  const crash = (err: unknown) => {
    process.stderr.write(`netmangle serve: internal error: ${err instanceof Error ? err.stack ?? err.message : String(err)} (please report this); detaching everything\n`);
    void service.stop().catch(() => {}).finally(() => process.exit(70));
  };
  process.on('uncaughtException', crash);
  process.on('unhandledRejection', crash);
  const signal = await new Promise<NodeJS.Signals>((resolve) => {
    for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) process.once(sig, resolve);
  });
  try {
    const names = await service.stop();
    log(`${signal}: detached ${names.length} fault${names.length === 1 ? '' : 's'}${names.length ? ` (${names.join(', ')})` : ''}; stopped`);
  } catch (err) {
    process.stderr.write(`netmangle serve: on ${signal}: ${printable((err as Error).message, { multiline: true })}\n`);
    process.exitCode = 1;
  }
}
