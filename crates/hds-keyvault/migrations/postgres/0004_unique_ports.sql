-- Two nodes creating vaults at once must not give them one listener port.
CREATE UNIQUE INDEX keyvault_vaults_port ON keyvault_vaults (port);
