import { GetKeyPolicyCommand, PutKeyPolicyCommand, type KMSClient } from '@aws-sdk/client-kms';

/** Changes who may use a KMS key. */
export interface KeyAccessControl {
  /** Allows only `principals` to use the key from now on; every other caller gets AccessDeniedException. */
  restrictTo(keyArn: string, principals: string[]): Promise<void>;
}

/**
 * Sets a key's access list on the rewrap KMS emulator through its
 * `PUT /_emulator/key-access` extension. Principals are access key ids.
 */
export class EmulatorKeyAccess implements KeyAccessControl {
  constructor(private readonly endpoint: string) {}

  async restrictTo(keyArn: string, principals: string[]): Promise<void> {
    const response = await fetch(new URL('/_emulator/key-access', this.endpoint), {
      method: 'PUT',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ KeyId: keyArn, Principals: principals }),
    });
    if (!response.ok) {
      throw new Error(`KMS emulator at ${this.endpoint} returned HTTP ${response.status} for PUT /_emulator/key-access for ${keyArn}; is it a rewrap KMS emulator?`);
    }
  }
}

/**
 * Stands in for the key-policy path when no rotation principal ARN is known.
 * NOTE: grants to application principals (ListGrants, RevokeGrant) are not
 * revoked by either path, so a grant still lets its grantee use the key.
 */
export class AwsKeyAccess implements KeyAccessControl {
  restrictTo(keyArn: string): Promise<void> {
    return Promise.reject(
      new Error(
        `revoking application access to ${keyArn} on AWS KMS needs the IAM ARN the rotation runs as; ` +
          'pass --rotation-principal-arn arn:aws:iam::ACCOUNT:role/NAME',
      ),
    );
  }
}

/** Sid of the key policy statement that `KeyPolicyAccess` writes and replaces. */
export const denyStatementSid = 'RewrapDenyApplicationUse';

/** Actions that give a caller plaintext under the key, or a copy of it under another key. */
const deniedActions = ['kms:Decrypt', 'kms:ReEncryptFrom', 'kms:GenerateDataKey*'];

/**
 * Restricts a key through its key policy: GetKeyPolicy, then PutKeyPolicy with
 * one Deny statement of `deniedActions` for every principal whose ARN
 * (`aws:PrincipalArn`) is not in the list. Principals are IAM ARNs, such as
 * a role ARN. A statement with `denyStatementSid` is replaced, so that
 * rerunning changes nothing. Needs kms:GetKeyPolicy and kms:PutKeyPolicy.
 */
export class KeyPolicyAccess implements KeyAccessControl {
  constructor(private readonly kms: KMSClient) {}

  async restrictTo(keyArn: string, principals: string[]): Promise<void> {
    const current = await this.kms.send(new GetKeyPolicyCommand({ KeyId: keyArn, PolicyName: 'default' }));
    if (current.Policy === undefined) throw new Error(`GetKeyPolicy for ${keyArn} returned no policy`);
    const document = JSON.parse(current.Policy) as { Statement?: unknown };
    const statements = document.Statement === undefined ? [] : Array.isArray(document.Statement) ? (document.Statement as unknown[]) : [document.Statement];
    const otherStatements = statements.filter((statement) => (statement as { Sid?: unknown } | null)?.Sid !== denyStatementSid);
    const deny = {
      Sid: denyStatementSid,
      Effect: 'Deny',
      Principal: { AWS: '*' },
      Action: deniedActions,
      Resource: '*',
      Condition: { ArnNotEquals: { 'aws:PrincipalArn': principals } },
    };
    const policy = JSON.stringify({ ...document, Statement: [...otherStatements, deny] });
    await this.kms.send(new PutKeyPolicyCommand({ KeyId: keyArn, PolicyName: 'default', Policy: policy }));
  }
}

/**
 * Restricts a key through its key policy to one stated principal ARN, the
 * role the rotation runs as, whatever principals the caller names. Used when
 * the operator states that ARN, since an assumed-role session's own ARN is
 * not what `aws:PrincipalArn` matches.
 */
export class RotationPrincipalPolicyAccess implements KeyAccessControl {
  constructor(
    private readonly policy: KeyPolicyAccess,
    private readonly principalArn: string,
  ) {}

  restrictTo(keyArn: string, _principals: string[] = []): Promise<void> {
    return this.policy.restrictTo(keyArn, [this.principalArn]);
  }
}
