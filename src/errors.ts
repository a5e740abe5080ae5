/**
 * Errors a user can act on. The CLI prints `netmangle: <message>` (plus the hint on its own
 * line when there is one) and exits with `exitCode`, never a stack trace. Anything that is not a
 * NetmangleError reaching the top is a bug in netmangle and is reported as such.
 */
export class NetmangleError extends Error {
  /** What the user can do about it, printed after the message. */
  readonly hint?: string;
  readonly exitCode: number;
  constructor(message: string, opts: { hint?: string; exitCode?: number; cause?: unknown } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = new.target.name;
    this.hint = opts.hint;
    this.exitCode = opts.exitCode ?? 1;
  }
}

/** Bad input from the user: a rule, a file, an option (exit code 2). */
export class UsageError extends NetmangleError {
  constructor(message: string, opts: { hint?: string; cause?: unknown } = {}) {
    super(message, { ...opts, exitCode: 2 });
  }
}

/** A network namespace or an interface that is not there (the target of an attach). */
export class NotFoundError extends NetmangleError {}

/** A hook that already holds a program netmangle did not attach (it never replaces one). */
export class HookBusyError extends NetmangleError {}

/**
 * The kernel's verifier refused a program netmangle generated: a netmangle bug, reported with
 * the end of the verifier's log in the message and the whole log in `verifierLog`.
 */
export class ProgramRejectedError extends NetmangleError {
  readonly verifierLog: string;
  constructor(message: string, verifierLog: string, opts: { hint?: string; exitCode?: number; cause?: unknown } = {}) {
    super(message, opts);
    this.verifierLog = verifierLog;
  }
}

/** Exit codes of the `netmangle` command; docs/exit-codes.md is the table users read. */
export const EXIT = {
  ok: 0,
  /** Something failed at run time: the kernel refused, a namespace is gone, not root … */
  failure: 1,
  /** Bad input: a rule, an option, a path the user gave that cannot be used. */
  usage: 2,
  /** A bug in netmangle: an error it did not expect (please report it). */
  internal: 70,
  /** Stopped by SIGINT (128 + 2) after detaching. */
  sigint: 130,
  /** Stopped by SIGTERM (128 + 15) after detaching. */
  sigterm: 143,
} as const;

/** The errno codes of ordinary mistakes with files and permissions, in words. */
const SYSTEM_ERRORS: Record<string, { reason: string; hint: string }> = {
  ENOENT: { reason: 'no such file or directory', hint: 'check the path (the directory must exist)' },
  EACCES: { reason: 'permission denied', hint: 'run it as root (sudo), or use a path you may write' },
  EPERM: { reason: 'operation not permitted', hint: 'run it as root (sudo)' },
  EISDIR: { reason: 'it is a directory', hint: 'give a file name, not a directory' },
  ENOTDIR: { reason: 'a part of the path is not a directory', hint: 'check the path' },
  EEXIST: { reason: 'it already exists', hint: 'remove it first, or pick another name' },
  ENOSPC: { reason: 'no space left on the device', hint: 'free some space, or write elsewhere' },
  EROFS: { reason: 'the file system is read-only', hint: 'write elsewhere' },
};

/** What an fs error (ENOENT, EACCES, EISDIR …) means, in a few words. */
export function describeSystemErrorCode(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  return (e?.code && SYSTEM_ERRORS[e.code]?.reason) || (e?.message ?? String(err));
}

/**
 * An ordinary fs or permission error (a Node error carrying one of the errno codes above) as a
 * NetmangleError naming the path and what to do; anything else is returned unchanged. `exitCode`
 * is 2 when the path came from the user (see fsUsageError) and 1 when netmangle chose it (its
 * state directories, bpffs): then it is most often a missing `sudo`.
 */
export function fromSystemError(err: unknown, exitCode: number = EXIT.failure): unknown {
  if (err instanceof NetmangleError || !(err instanceof Error)) return err;
  const e = err as NodeJS.ErrnoException;
  const known = e.code ? SYSTEM_ERRORS[e.code] : undefined;
  if (!known) return err;
  const what = e.path ? `${e.syscall ? `${verbOf(e.syscall)} ` : ''}${e.path}` : (e.syscall ?? 'a system call');
  const dest = (e as { dest?: string }).dest ? ` → ${(e as { dest?: string }).dest}` : '';
  return new NetmangleError(`cannot ${what}${dest}: ${known.reason}`, { hint: known.hint, exitCode, cause: err });
}

/** The same for a path the user named (an output file, a rules file): a usage error, exit 2. */
export function fsUsageError(err: unknown, what: string): unknown {
  if (err instanceof NetmangleError || !(err instanceof Error)) return err;
  const e = err as NodeJS.ErrnoException;
  const known = e.code ? SYSTEM_ERRORS[e.code] : undefined;
  if (!known) return err;
  return new UsageError(`cannot ${what}: ${known.reason}`, { hint: known.hint, cause: err });
}

function verbOf(syscall: string): string {
  switch (syscall) {
    case 'open': return 'open';
    case 'mkdir': return 'create directory';
    case 'rmdir': case 'rm': case 'unlink': return 'remove';
    case 'rename': return 'rename';
    case 'scandir': return 'list';
    case 'write': return 'write';
    case 'read': return 'read';
    default: return `${syscall}`;
  }
}

/** Formats any thrown value as the one or two lines the CLI prints. */
export function describeError(err: unknown): string {
  err = fromSystemError(err);
  if (err instanceof NetmangleError) {
    return err.hint ? `${err.message}\n  ${err.hint}` : err.message;
  }
  if (err instanceof Error) return `internal error: ${err.message} (please report this)`;
  return `internal error: ${String(err)}`;
}

/** The exit code the CLI ends with for an error that reached its top. */
export function exitCodeOf(err: unknown): number {
  err = fromSystemError(err);
  return err instanceof NetmangleError ? err.exitCode : EXIT.internal;
}
