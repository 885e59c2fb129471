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
      throw new Error(`KMS emulator at ${this.endpoint} answered HTTP ${response.status} to PUT /_emulator/key-access for ${keyArn}; is it a rewrap KMS emulator?`);
    }
  }
}

/**
 * NOTE: not implemented. Against AWS KMS, revoking a key for application
 * use means GetKeyPolicy, then PutKeyPolicy with a statement that denies
 * kms:Decrypt, kms:ReEncryptFrom, kms:GenerateDataKey* and kms:Encrypt to
 * every principal except the rotation role (a Deny with a
 * `StringNotEquals aws:PrincipalArn` condition), plus ListGrants and
 * RevokeGrant for each grant that names an application principal. The
 * rotation role needs kms:GetKeyPolicy, kms:PutKeyPolicy, kms:ListGrants and
 * kms:RevokeGrant on the key, and principals are role ARNs, not access key ids.
 */
export class AwsKeyAccess implements KeyAccessControl {
  restrictTo(keyArn: string): Promise<void> {
    return Promise.reject(
      new Error(`revoking application access to ${keyArn} is implemented for the KMS emulator only; change the key policy by hand and rerun with --skip-revoke`),
    );
  }
}
