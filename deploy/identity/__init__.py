"""The automation identity's credentials: client-secret rotation through Microsoft Graph, and role drift."""
