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

/** Formats any thrown value as the one or two lines the CLI prints. */
export function describeError(err: unknown): string {
  if (err instanceof NetmangleError) {
    return err.hint ? `${err.message}\n  ${err.hint}` : err.message;
  }
  if (err instanceof Error) return `internal error: ${err.message} (please report this)`;
  return `internal error: ${String(err)}`;
}
