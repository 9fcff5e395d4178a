"""The official Azure SDK for Python as a client of the kvfetch emulator (run by tests/sdk.rs).

usage: fetch.py VAULT_URL CA_FILE OUT_FILE get NAME
       fetch.py VAULT_URL CA_FILE OUT_FILE list
       fetch.py VAULT_URL CA_FILE OUT_FILE props NAME
       fetch.py VAULT_URL CA_FILE OUT_FILE msal

The identity source is the one the environment selects, as in production: workload identity
when AZURE_FEDERATED_TOKEN_FILE is set, otherwise ManagedIdentityCredential's own choice. The
result goes to OUT_FILE as JSON ({"value": …} or {"names": […]}), never to stdout or stderr.

Client options, each one a real user of a private endpoint sets too:
- connection_verify=CA_FILE: trust the emulator's CA (as for a TLS-inspecting proxy's CA);
- verify_challenge_resource=False: the vault is https://127.0.0.1:PORT, whose host is not under
  the challenge's resource (vault.azure.net); documented for vaults behind custom domains;
- (msal only) instance_discovery=False: the authority is not a Microsoft host, as for Azure
  Stack or a private cloud; without it MSAL asks login.microsoftonline.com about it. MSAL then
  reads the authority's OIDC discovery document, as MSAL for JavaScript (@azure/identity) does.
  azure-identity's WorkloadIdentityCredential posts to the token endpoint directly.
"""

import json
import os
import sys

from azure.identity import ManagedIdentityCredential, WorkloadIdentityCredential
from azure.keyvault.secrets import SecretClient


def credential(ca_file):
    if os.environ.get("AZURE_FEDERATED_TOKEN_FILE"):
        return WorkloadIdentityCredential(connection_verify=ca_file)
    # A user-assigned identity, as the application would name it (test-only variables).
    if os.environ.get("SDK_TEST_CLIENT_ID"):
        return ManagedIdentityCredential(client_id=os.environ["SDK_TEST_CLIENT_ID"], connection_verify=ca_file)
    if os.environ.get("SDK_TEST_OBJECT_ID"):
        return ManagedIdentityCredential(
            identity_config={"object_id": os.environ["SDK_TEST_OBJECT_ID"]}, connection_verify=ca_file
        )
    return ManagedIdentityCredential(connection_verify=ca_file)


def msal_token(ca_file):
    """A client-credentials token with the federated assertion, through MSAL's own discovery."""
    import msal

    with open(os.environ["AZURE_FEDERATED_TOKEN_FILE"], encoding="utf-8") as f:
        assertion = f.read()
    app = msal.ConfidentialClientApplication(
        os.environ["AZURE_CLIENT_ID"],
        client_credential={"client_assertion": assertion},
        authority=os.environ["AZURE_AUTHORITY_HOST"].rstrip("/") + "/" + os.environ["AZURE_TENANT_ID"],
        instance_discovery=False,
        verify=ca_file,
    )
    answer = app.acquire_token_for_client(scopes=["https://vault.azure.net/.default"])
    return {"token": bool(answer.get("access_token")), "error": answer.get("error")}


def main(vault_url, ca_file, out_file, action, name=None):
    if action == "msal":
        with open(out_file, "w", encoding="utf-8") as f:
            json.dump(msal_token(ca_file), f)
        return
    client = SecretClient(
        vault_url,
        credential(ca_file),
        verify_challenge_resource=False,
        connection_verify=ca_file,
    )
    if action == "get":
        result = {"value": client.get_secret(name).value}
    elif action == "props":
        p = client.get_secret(name).properties
        result = {
            "managed": p.managed,
            "tags": p.tags,
            "content_type": p.content_type,
            "expires_on": int(p.expires_on.timestamp()) if p.expires_on else None,
            "not_before": int(p.not_before.timestamp()) if p.not_before else None,
        }
    else:
        result = {"names": [p.name for p in client.list_properties_of_secrets(max_page_size=2)]}
    with open(out_file, "w", encoding="utf-8") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
