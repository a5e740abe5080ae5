/**
 * Errors in rule text: they show the rule with a caret line under the part that is wrong, so
 * the user sees where without counting characters.
 */
import { UsageError } from '../errors.js';
import type { Span } from './ast.js';
import { printable } from '../printable.js';

export class RuleError extends UsageError {
  /** The reason alone, without location or caret lines. */
  readonly reason: string;
  /** The rule text the span points into. */
  readonly source: string;
  readonly span: Span;
  /** Where the text came from (`rules.yaml:4`), when it came from a file. */
  readonly location?: string;

  constructor(reason: string, source: string, span: Span, opts: { hint?: string; location?: string } = {}) {
    super(renderRuleError(reason, source, span, opts.location), { hint: opts.hint });
    this.reason = reason;
    this.source = source;
    this.span = span;
    this.location = opts.location;
  }

  /** 1-based column of the span's start in its line of `source` (what an editor shows). */
  get column(): number {
    return this.span.start - (this.source.lastIndexOf('\n', Math.max(0, this.span.start - 1)) + 1) + 1;
  }

  /** The same error, located in a file. */
  at(location: string): RuleError {
    return new RuleError(this.reason, this.source, this.span, { hint: this.hint, location });
  }
}

/** Columns of the source line an error shows: a longer line is cut to a window around the span. */
export const MAX_SHOWN_LINE = 120;

/**
 *     unknown field "ip.tll" (did you mean ip.ttl?)
 *       icmp.type == 0 => set ip.tll = 1
 *                             ^^^^^^
 * Only the source line holding the span's start is shown; tabs count as one column, control
 * characters as their escapes (printable.ts). A line longer than MAX_SHOWN_LINE is shown as a
 * window around the span, cut with "…", so a huge rule never becomes a huge message.
 */
export function renderRuleError(reason: string, source: string, span: Span, location?: string): string {
  const lineStart = source.lastIndexOf('\n', Math.max(0, span.start - 1)) + 1;
  let lineEnd = source.indexOf('\n', lineStart);
  if (lineEnd < 0) lineEnd = source.length;
  let from = lineStart;
  let to = lineEnd;
  if (to - from > MAX_SHOWN_LINE) {
    // Some context before the span, then as much of it and after it as fits.
    from = Math.max(lineStart, Math.min(span.start, lineEnd) - 20);
    to = Math.min(lineEnd, from + MAX_SHOWN_LINE);
  }
  const cutBefore = from > lineStart ? '…' : '';
  const cutAfter = to < lineEnd ? '…' : '';
  const raw = source.slice(from, to).replace(/\t/g, ' ');
  const markFrom = Math.min(Math.max(span.start, from), to) - from;
  const markTo = Math.max(markFrom, Math.min(span.end, to) - from);
  // Control characters are shown escaped (ESC as \x1b): the caret goes under the escaped text.
  const before = cutBefore + printable(raw.slice(0, markFrom));
  const marked = printable(raw.slice(markFrom, markTo));
  const line = before + marked + printable(raw.slice(markTo)) + cutAfter;
  const head = printable(location ? `${location}: ${reason}` : reason);
  return `${head}\n  ${line}\n  ${' '.repeat(before.length)}${'^'.repeat(Math.max(1, marked.length))}`;
}
