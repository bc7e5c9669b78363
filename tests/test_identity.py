"""Which managed identity the app signs in as, from its settings."""

from visionary.identity import ManagedIdentity, named_identity

CLIENT = "6f1c2d3e-0000-4000-8000-000000000001"
HOST_CLIENT = "6f1c2d3e-0000-4000-8000-000000000002"
RESOURCE = "/subscriptions/0000/resourceGroups/gallery/providers/Microsoft.ManagedIdentity/userAssignedIdentities/app"


def test_the_apps_own_setting_wins_over_the_hosts():
    both = {"AZURE_CLIENT_ID": CLIENT, "AzureWebJobsStorage__clientId": HOST_CLIENT}
    assert named_identity(both) == ManagedIdentity(client_id=CLIENT)


def test_a_client_id_wins_over_a_resource_id():
    both = {"AzureWebJobsStorage__clientId": HOST_CLIENT, "AzureWebJobsStorage__managedIdentityResourceId": RESOURCE}
    assert named_identity(both) == ManagedIdentity(client_id=HOST_CLIENT)


def test_a_blank_setting_names_no_identity_and_a_padded_one_is_trimmed():
    # A portal field left with a space (or a line break pasted with the id) is not an identity.
    assert named_identity({"AZURE_CLIENT_ID": " ", "AzureWebJobsStorage__clientId": f"{HOST_CLIENT}\n"}) == ManagedIdentity(
        client_id=HOST_CLIENT
    )
    assert named_identity({"AZURE_CLIENT_ID": "", "AzureWebJobsStorage__managedIdentityResourceId": " "}) == ManagedIdentity()
