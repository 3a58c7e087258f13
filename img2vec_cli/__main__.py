from img2vec_cli.main import main

main()
