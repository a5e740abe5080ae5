/** The rule language: field catalog, parser, checker, loaders for the one-line form and rules files. */
export * from './ast.js';
export * from './catalog.js';
export { RuleError, renderRuleError } from './errors.js';
export { tokenize, parseIpv6, type Token } from './lexer.js';
export { parseRuleText, parseMatchAt, parseExprAt, parseActionsAt, type ParsedRule } from './parser.js';
export { checkRule, constantCond, fieldBits, type CheckedRule } from './check.js';
export { formatAddress, formatAction, formatCond, formatExpr, formatRule } from './format.js';
export * from './load.js';
export { renderFieldTable } from './field-table.js';
