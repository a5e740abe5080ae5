/**
 * Running the tools a lab is built and measured with (iproute2, ethtool, ping, iperf3,
 * tcpdump, nstat) as child processes, with their output collected and their failures turned
 * into errors that say which command failed and why.
 */
import { spawn, type SpawnOptions } from 'node:child_process';
import { NetmangleError } from '../errors.js';

export interface RunResult {
  /** Exit code; 128 + signal number when the process died of a signal. */
  code: number;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  /** Written to the process's standard input, which is then closed. */
  input?: string;
  /** Kill the process (SIGKILL) after this long; the result then has code 124 + a note in stderr. */
  timeoutMs?: number;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
}

const SIGNAL_NUMBERS: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGKILL: 9, SIGSEGV: 11, SIGPIPE: 13, SIGALRM: 14, SIGTERM: 15 };

/** Exit code a shell would report for a process killed by `signal`. */
export function signalExitCode(signal: NodeJS.Signals | null): number {
  return signal ? 128 + (SIGNAL_NUMBERS[signal] ?? 0) : 1;
}

/** Names the tool a missing executable belongs to, for the error a user sees. */
const PACKAGE_OF: Record<string, string> = {
  ip: 'iproute2',
  nstat: 'iproute2',
  ethtool: 'ethtool',
  ping: 'iputils-ping',
  iperf3: 'iperf3',
  tcpdump: 'tcpdump',
};

/** Runs argv[0] with the rest as arguments and collects its output. Never throws for a non-zero exit. */
export function run(argv: string[], opts: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const spawnOpts: SpawnOptions = { stdio: ['pipe', 'pipe', 'pipe'], env: opts.env ?? process.env, cwd: opts.cwd };
    const child = spawn(argv[0]!, argv.slice(1), spawnOpts);
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = opts.timeoutMs === undefined ? undefined : setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, opts.timeoutMs);
    child.on('error', (err: NodeJS.ErrnoException) => {
      if (timer) clearTimeout(timer);
      if (err.code === 'ENOENT') {
        const pkg = PACKAGE_OF[argv[0]!];
        reject(new NetmangleError(`${argv[0]} is not installed`, { hint: pkg ? `install ${pkg} (scripts/setup.sh does)` : undefined }));
      } else reject(new NetmangleError(`cannot run ${argv[0]}: ${err.message}`));
    });
    child.on('close', (code, signal) => {
      if (timer) clearTimeout(timer);
      if (timedOut) stderr += `\n(killed after ${opts.timeoutMs} ms)`;
      resolve({ code: timedOut ? 124 : (code ?? signalExitCode(signal)), signal, stdout, stderr });
    });
    child.stdin!.on('error', () => {}); // a process that exits without reading its input is not an error
    child.stdin!.end(opts.input ?? '');
  });
}

/** Runs a command that must succeed; the error names the command and repeats its complaint. */
export async function runChecked(argv: string[], what: string, opts: RunOptions = {}): Promise<RunResult> {
  const r = await run(argv, opts);
  if (r.code !== 0) {
    const why = (r.stderr.trim() || r.stdout.trim()).split('\n').pop() ?? `exit code ${r.code}`;
    throw new NetmangleError(`${what}: \`${argv.join(' ')}\` failed: ${why}`);
  }
  return r;
}

/** Namespaces that exist now (`ip netns list`), by name. */
export async function listNamespaces(): Promise<string[]> {
  const r = await runChecked(['ip', 'netns', 'list'], 'list network namespaces');
  return r.stdout
    .split('\n')
    .map((l) => l.trim().split(/\s+/)[0] ?? '')
    .filter((n) => n !== '');
}

/** Exits with an error a user can act on when not root: every lab step needs CAP_NET_ADMIN and CAP_SYS_ADMIN. */
export function requireRoot(what: string): void {
  if (typeof process.getuid === 'function' && process.getuid() !== 0) {
    throw new NetmangleError(`${what} needs root (network namespaces need CAP_SYS_ADMIN and CAP_NET_ADMIN)`, {
      hint: 'run it with sudo',
    });
  }
}
