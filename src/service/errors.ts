/**
 * Errors as the service answers them: JSON `{error, hint?, at?}` with the HTTP status a client
 * can branch on, and the same one-line message the CLI prints for the same mistake.
 *
 *   400  a body that is not JSON, fails the route's schema, has a rule with a syntax error
 *   401  no `Authorization: Bearer …` on a TCP listener; 403 a token that does not match
 *   404  no such fault, interface or network namespace
 *   409  the name is taken, or the hook holds a program netmangle did not attach
 *   413  a body over the size limit
 *   422  a rule the checker or the kernel's verifier refuses
 *   500  anything else: a kernel call that failed (its message says which), or a netmangle bug
 */
import { HookBusyError, NetmangleError, NotFoundError, ProgramRejectedError, UsageError } from '../errors.js';
import { RuleError } from '../rules/errors.js';

/** Where in the request the error is: a field of the body (`rules[1]`, `[3].hook`) and, in a rule, the column (1-based). */
export interface ErrorLocation {
  field?: string;
  column?: number;
}

export interface ErrorBody {
  error: string;
  hint?: string;
  at?: ErrorLocation;
}

export class HttpError extends Error {
  constructor(readonly status: number, message: string, readonly hint?: string, readonly at?: ErrorLocation) {
    super(message);
    this.name = 'HttpError';
  }

  body(): ErrorBody {
    const out: ErrorBody = { error: this.message };
    if (this.hint !== undefined) out.hint = this.hint;
    if (this.at !== undefined) out.at = this.at;
    return out;
  }

  /** The same error, located under `prefix` (a populate item: `[2]`). */
  within(prefix: string): HttpError {
    const field = this.at?.field === undefined ? prefix : `${prefix}${this.at.field.startsWith('[') ? '' : '.'}${this.at.field}`;
    return new HttpError(this.status, this.message, this.hint, { ...this.at, field });
  }
}

/** The CLI's option names in messages from the rule loader, as the JSON fields the service takes. */
const FIELD_OF_OPTION: Record<string, string> = {
  '--dev': 'dev', '--hook': 'hook', '--netns': 'netns', '--probability': 'probability', '--every': 'every',
  '--first': 'first', '--after': 'after', '--per-connection': 'perConnection', '--connections': 'connections',
  '--limit': 'limit', '--start-after': 'startAfter', '--for': 'for', '--checksum': 'checksum', '--lengths': 'lengths',
  '--seed': 'seed', '--name': 'name',
};

function speakJson(text: string): string {
  return text.replace(/--[a-z][a-z-]*/g, (opt) => FIELD_OF_OPTION[opt] ?? opt);
}

/** The first line of a message: a rule error's caret lines stay out of `error` (the column is in `at`). */
function firstLine(text: string): string {
  const nl = text.indexOf('\n');
  return nl < 0 ? text : text.slice(0, nl);
}

/** Our own program already on an XDP hook is not a HookBusyError (nothing foreign there), but it is a conflict all the same. */
const CONFLICT = [/is already attached/];

/**
 * The HTTP error for anything an operation threw. `field` names the body field the rules came
 * from, so a rule's error says which rule (`rules[0]`).
 */
export function toHttpError(err: unknown, ruleField?: (err: RuleError) => string | undefined): HttpError {
  if (err instanceof HttpError) return err;
  if (err instanceof RuleError) {
    // Syntax errors are caught before attaching (400); what reaches here is the checker's refusal.
    return new HttpError(422, err.reason, err.hint, { field: ruleField?.(err), column: err.span.start + 1 });
  }
  if (err instanceof NetmangleError) {
    const message = speakJson(firstLine(err.message));
    const hint = err.hint === undefined ? undefined : speakJson(err.hint);
    if (err instanceof NotFoundError) return new HttpError(404, message, hint);
    if (err instanceof HookBusyError || CONFLICT.some((re) => re.test(err.message))) return new HttpError(409, message, hint);
    if (err instanceof ProgramRejectedError) {
      // The verifier's reason is in the message's further lines: keep them, on one line.
      return new HttpError(422, speakJson(err.message.split('\n').map((l) => l.trim()).filter(Boolean).join(' | ')), hint);
    }
    if (err instanceof UsageError) return new HttpError(400, message, hint);
    // The compiler's refusals of a rule set (too many rules, a program too long): the rules were
    // well formed, what they ask cannot be built.
    if (err.exitCode === 2) return new HttpError(422, message, hint);
    return new HttpError(500, message, hint);
  }
  const text = err instanceof Error ? err.message : String(err);
  return new HttpError(500, `internal error: ${text} (please report this)`);
}
