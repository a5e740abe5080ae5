import { describeSystemErrorCode, NetmangleError } from '../errors.js';

/**
 * A capture file that cannot be read or written: missing, truncated, corrupt, or in a format
 * netmangle does not handle. `offset` is the byte offset in the file where the problem starts,
 * when there is one, so the user can look at it with `xxd -s OFFSET`.
 */
export class CaptureError extends NetmangleError {
  /** The file name (or stream name) as the user gave it. */
  readonly file: string;
  /** Byte offset of the bad record or block, when the error is about a position in the file. */
  readonly offset: number | undefined;

  constructor(file: string, message: string, opts: { offset?: number; hint?: string; cause?: unknown; exitCode?: number } = {}) {
    super(`${file}: ${message}`, { hint: opts.hint, cause: opts.cause, exitCode: opts.exitCode });
    this.file = file;
    this.offset = opts.offset;
  }
}

/** Turns an fs error (ENOENT, EACCES, EISDIR …) into one readable line. */
export function describeFsError(err: unknown): string {
  if ((err as NodeJS.ErrnoException)?.code === 'EPIPE') return 'the reader closed the pipe';
  if ((err as NodeJS.ErrnoException)?.code === 'EISDIR') return 'is a directory';
  return describeSystemErrorCode(err);
}
