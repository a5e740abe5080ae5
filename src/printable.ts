/**
 * Text from users (rule text and names, file names, interface names, section names of an ELF
 * object, capture comments) made safe for a terminal or a log line: a rules file must not be
 * able to move the cursor, retitle the window (OSC), hide what is printed (CR, erase), inject
 * a hyperlink or fake a line of output. Every character a terminal would act on instead of
 * showing is written as an escape a reader can see and copy.
 */

/**
 * C0 controls and DEL, C1 controls (a terminal may take U+009B as CSI), the line and
 * paragraph separators, the bidirectional controls that reorder what is shown, and lone
 * surrogates (not text at all).
 */
const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ufeff]|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;
const UNSAFE_KEEP_NEWLINES = new RegExp(UNSAFE.source.replace('\\u0000-\\u001f', '\\u0000-\\u0009\\u000b-\\u001f'), 'g');

function escape(c: string): string {
  const code = c.charCodeAt(0);
  return code < 0x80 ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u${code.toString(16).padStart(4, '0')}`;
}

/**
 * `text` with every unsafe character escaped: ESC as `\x1b`, CR as `\x0d`, CSI (U+009B) as
 * `\u009b`. Newlines are escaped too unless `multiline`, for messages of several lines whose
 * line breaks are netmangle's own. Already escaped text comes back unchanged, so text can be
 * made printable where it is built and again where it is written.
 */
export function printable(text: string, opts: { multiline?: boolean } = {}): string {
  return text.replace(opts.multiline ? UNSAFE_KEEP_NEWLINES : UNSAFE, escape);
}

/** Whether `text` is shown as it is (nothing in it needs escaping). */
export function isPrintable(text: string): boolean {
  UNSAFE.lastIndex = 0;
  return !UNSAFE.test(text);
}

/**
 * JSON text (JSON.stringify's, which escapes C0 controls but leaves DEL, C1 controls and the
 * rest as they are) with those written as \u escapes: the same JSON to a parser, safe on a
 * terminal. Its own line breaks (pretty-printing) stay.
 */
export function printableJson(json: string): string {
  return json.replace(UNSAFE_KEEP_NEWLINES, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}
