"""What the tests and the bench share: saved payloads, event and push builders, the Firestore meter,
the Terraform reader, and the HTTP steps a client takes on the local cloud. Neither the tests nor
the bench import each other; both import this."""
