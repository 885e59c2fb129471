import { KmsError } from './errors.js';

/** The name of the only key policy a KMS key has. */
export const DEFAULT_POLICY_NAME = 'default';

/** Returns the policy that AWS KMS gives a key created without one: the account root may do anything with the key. */
export function defaultKeyPolicy(accountId: string): string {
  return JSON.stringify({
    Version: '2012-10-17',
    Id: 'key-default-1',
    Statement: [
      {
        Sid: 'Enable IAM User Permissions',
        Effect: 'Allow',
        Principal: { AWS: `arn:aws:iam::${accountId}:root` },
        Action: 'kms:*',
        Resource: '*',
      },
    ],
  });
}

/** A Deny statement the emulator enforces: these actions are denied to every principal whose ARN is not in `exceptPrincipalArns`. */
export interface DenyRule {
  actions: string[];
  /** Undefined when the statement has no condition, which denies every principal. */
  exceptPrincipalArns: string[] | undefined;
}

const malformed = (message: string) => new KmsError('MalformedPolicyDocumentException', message);

function stringList(value: unknown, name: string): string[] {
  const list = typeof value === 'string' ? [value] : value;
  if (!Array.isArray(list) || list.length === 0 || !list.every((item) => typeof item === 'string')) {
    throw malformed(`${name} must be a string or a non-empty list of strings.`);
  }
  return list as string[];
}

/**
 * Parses a key policy and returns its Deny statements. Allow statements are
 * accepted and not evaluated, because the emulator allows every caller by
 * default. A Deny statement must apply to every principal and may have one
 * condition, ArnNotEquals or StringNotEquals on aws:PrincipalArn. Any other
 * Deny is rejected, so that a policy never looks enforced when it is not.
 */
export function parseKeyPolicy(text: string): DenyRule[] {
  let document: unknown;
  try {
    document = JSON.parse(text);
  } catch {
    throw malformed('The key policy is not valid JSON.');
  }
  const statements = (document as { Statement?: unknown } | null)?.Statement;
  if (statements === undefined) throw malformed('The key policy has no Statement.');
  const list = Array.isArray(statements) ? statements : [statements];
  const rules: DenyRule[] = [];
  for (const [index, entry] of list.entries()) {
    const statement = entry as Record<string, unknown> | null;
    if (typeof statement !== 'object' || statement === null) throw malformed(`Statement ${index} must be an object.`);
    if (statement.Effect === 'Allow') continue;
    if (statement.Effect !== 'Deny') throw malformed(`Statement ${index} has Effect ${String(statement.Effect)}; expected Allow or Deny.`);
    const principal = statement.Principal;
    const everyone = principal === '*' || (typeof principal === 'object' && principal !== null && (principal as { AWS?: unknown }).AWS === '*');
    if (!everyone) throw malformed(`Deny statement ${index}: the KMS emulator enforces Deny only for Principal "*" or {"AWS": "*"}.`);
    const actions = stringList(statement.Action, `Deny statement ${index} Action`);
    rules.push({ actions, exceptPrincipalArns: parseCondition(statement.Condition, index) });
  }
  return rules;
}

function parseCondition(condition: unknown, index: number): string[] | undefined {
  if (condition === undefined) return undefined;
  const unsupported = () => malformed(`Deny statement ${index}: the KMS emulator supports one condition, ArnNotEquals or StringNotEquals on aws:PrincipalArn.`);
  if (typeof condition !== 'object' || condition === null) throw unsupported();
  const operators = Object.entries(condition as Record<string, unknown>);
  if (operators.length !== 1) throw unsupported();
  const [operator, keys] = operators[0]!;
  if (operator !== 'ArnNotEquals' && operator !== 'StringNotEquals') throw unsupported();
  if (typeof keys !== 'object' || keys === null) throw unsupported();
  const entries = Object.entries(keys as Record<string, unknown>);
  // Condition keys are case-insensitive in IAM policies.
  if (entries.length !== 1 || entries[0]![0].toLowerCase() !== 'aws:principalarn') throw unsupported();
  return stringList(entries[0]![1], `Deny statement ${index} aws:PrincipalArn`);
}

/**
 * Returns the IAM actions an operation needs. NOTE: ReEncrypt needs
 * kms:ReEncryptFrom on the source key and kms:ReEncryptTo on the target, but
 * the emulator checks both on each key, so denying one denies ReEncrypt both ways.
 */
function actionsOf(operation: string): string[] {
  return operation === 'ReEncrypt' ? ['kms:reencryptfrom', 'kms:reencryptto'] : [`kms:${operation.toLowerCase()}`];
}

/** Reports whether `pattern` (such as kms:Decrypt, kms:GenerateDataKey* or *) covers the operation, ignoring case as IAM does. */
function actionMatches(pattern: string, operation: string): boolean {
  const lower = pattern.toLowerCase();
  return actionsOf(operation).some((action) => {
    if (lower.endsWith('*')) return action.startsWith(lower.slice(0, -1));
    return action === lower;
  });
}

/** Returns the rule that denies `operation` to `principalArn`, if any. */
export function denyingRule(rules: DenyRule[], operation: string, principalArn: string): DenyRule | undefined {
  return rules.find(
    (rule) => rule.actions.some((pattern) => actionMatches(pattern, operation)) && !(rule.exceptPrincipalArns?.includes(principalArn) ?? false),
  );
}
