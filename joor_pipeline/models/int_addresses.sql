-- int_addresses: every address of every snapshot, with its country normalised to an ISO 3166-1 alpha-2 code.
-- grain: one row per (snapshot_date, customer_account_id, address_type, ordinal).
-- depends_on: stg_addresses
-- JOOR takes countries "in English or in ISO code format"; spellings are matched case-, dot- and
-- space-insensitively ('U.S.A.' = 'usa'). An unrecognised country keeps a null country_code.
with country_spellings (spelling, country_code) as (
    values
        ('united states', 'US'), ('united states of america', 'US'), ('us', 'US'), ('usa', 'US'),
        ('america', 'US'),
        ('canada', 'CA'), ('ca', 'CA'), ('can', 'CA'),
        ('japan', 'JP'), ('jp', 'JP'), ('jpn', 'JP'),
        ('australia', 'AU'), ('au', 'AU'), ('aus', 'AU'),
        ('france', 'FR'), ('fr', 'FR'), ('fra', 'FR'),
        ('italy', 'IT'), ('italia', 'IT'), ('it', 'IT'), ('ita', 'IT'),
        ('germany', 'DE'), ('deutschland', 'DE'), ('de', 'DE'), ('deu', 'DE'),
        ('united kingdom', 'GB'), ('great britain', 'GB'), ('england', 'GB'), ('scotland', 'GB'),
        ('wales', 'GB'), ('northern ireland', 'GB'), ('uk', 'GB'), ('gb', 'GB'), ('gbr', 'GB'),
        ('spain', 'ES'), ('espana', 'ES'), ('españa', 'ES'), ('es', 'ES'), ('esp', 'ES'),
        ('switzerland', 'CH'), ('schweiz', 'CH'), ('suisse', 'CH'), ('ch', 'CH'), ('che', 'CH'),
        ('sweden', 'SE'), ('sverige', 'SE'), ('se', 'SE'), ('swe', 'SE'),
        ('brazil', 'BR'), ('brasil', 'BR'), ('br', 'BR'), ('bra', 'BR'),
        ('denmark', 'DK'), ('danmark', 'DK'), ('dk', 'DK'), ('dnk', 'DK'),
        ('poland', 'PL'), ('polska', 'PL'), ('pl', 'PL'), ('pol', 'PL'),
        ('netherlands', 'NL'), ('the netherlands', 'NL'), ('holland', 'NL'), ('nederland', 'NL'),
        ('nl', 'NL'), ('nld', 'NL'),
        ('mexico', 'MX'), ('mx', 'MX'), ('mex', 'MX'),
        ('china', 'CN'), ('cn', 'CN'), ('chn', 'CN'),
        ('hong kong', 'HK'), ('hk', 'HK'), ('hkg', 'HK'),
        ('south korea', 'KR'), ('korea', 'KR'), ('republic of korea', 'KR'), ('kr', 'KR'), ('kor', 'KR'),
        ('belgium', 'BE'), ('be', 'BE'), ('bel', 'BE'),
        ('austria', 'AT'), ('at', 'AT'), ('aut', 'AT'),
        ('ireland', 'IE'), ('ie', 'IE'), ('irl', 'IE'),
        ('portugal', 'PT'), ('pt', 'PT'), ('prt', 'PT'),
        ('norway', 'NO'), ('no', 'NO'), ('nor', 'NO'),
        ('finland', 'FI'), ('fi', 'FI'), ('fin', 'FI'),
        ('new zealand', 'NZ'), ('nz', 'NZ'), ('nzl', 'NZ'),
        ('singapore', 'SG'), ('sg', 'SG'), ('sgp', 'SG'),
        ('united arab emirates', 'AE'), ('uae', 'AE'), ('ae', 'AE'), ('are', 'AE')
),

addresses as (
    select
        *,
        trim(regexp_replace(replace(lower(country), '.', ''), '\s+', ' ', 'g')) as country_spelling
    from stg_addresses
)

select
    addresses.* exclude (country_spelling),
    country_spellings.country_code,
    coalesce(country_spellings.country_code in ('US', 'CA', 'JP', 'AU'), false) as state_required
from addresses
left join country_spellings on country_spellings.spelling = addresses.country_spelling
