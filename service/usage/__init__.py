"""Usage accounting: what each tenant's jobs, trials and inference requests used."""
